"""POP3 sessions (RFC 1939, 2449): relay commands one at a time, byte for byte.

Replies are relayed exactly as the server sent them.  Multi-line replies are recognised by
the command (CAPA, RETR, TOP always; LIST, UIDL and AUTH without an argument), which is
safe because commands are strictly sequential.  STLS is answered locally and hidden from
CAPA: the proxy cannot relay a TLS handshake as text (spec §6.1, §14 S7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.net.destination import NoDestination, Route, useurl_route
from p3scan.net.stream import MAX_LINE, LineTooLong, Stream, copy_block
from p3scan.proxy.pop3msg import Retrieval
from p3scan.proxy.session import Session, SessionInfo, sasl_plain_user, split_command

BLOCK_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
BLOCK_WITHOUT_ARGUMENT = frozenset({"LIST", "UIDL", "AUTH"})
USEURL_MAX_TRIES = 10
MAX_CAPA_LINES = 512  # the reply is filtered in memory; real servers send a dozen
USEURL_CAPABILITIES = ("USER", "TOP", "UIDL", "RESP-CODES", "PIPELINING")

if TYPE_CHECKING:
    from p3scan.scan.scanning import Scanning


def expects_block(verb: str, arg: str) -> bool:
    """Whether a positive reply to this command is followed by a dot-terminated block."""
    return verb in BLOCK_ALWAYS or (verb in BLOCK_WITHOUT_ARGUMENT and not arg)


def is_ok(status: bytes) -> bool:
    return status[:3].upper() == b"+OK"


def capability_name(line: bytes) -> str:
    return line.decode("latin-1").strip().partition(" ")[0].upper()


class Pop3Session(Session):
    """One POP3 session between a client and its real server."""

    protocol = "POP3"
    line_error = b"-ERR [SYS/PERM] p3scan: command line too long\r\n"

    def failure_reply(self, text: str) -> bytes:
        return f"-ERR [SYS/TEMP] p3scan: {text}\r\n".encode("utf-8", "replace")

    def __init__(self, client: Stream, server: Stream, cfg: Settings, info: SessionInfo,
                 scanning: Scanning):
        super().__init__(client, server, cfg, info, scanning)
        self.verbs = {
            "CAPA": self.do_capa,
            "STLS": self.do_stls,
            "AUTH": self.do_auth,
            "USER": self.do_user,
            "APOP": self.do_apop,
            "QUIT": self.do_quit,
            "RETR": self.do_message,
            "TOP": self.do_message,
        }

    # --- greeting ---------------------------------------------------------------------------

    def greet(self) -> None:
        greeting = self.server_line()
        user = self.info.route.user
        if user is None or not is_ok(greeting):
            self.client.write(greeting)
            self.done = user is not None
            return
        # useurl: the client already got our +OK; log in with the user part of its USER.
        self.forward(f"USER {user}\r\n".encode("latin-1", "replace"))
        self.client.write(self.server_line())
        self.info.user = user

    # --- verbs ------------------------------------------------------------------------------

    def relay_command(self, line: bytes, verb: str, arg: str) -> None:
        """Forward one command and relay its whole reply unchanged."""
        self.forward(line)
        status = self.server_line()
        self.client.write(status)
        if is_ok(status) and expects_block(verb, arg):
            self.answered = True  # the block streams through: an error can only close
            copy_block(self.server, self.client.write)

    def do_message(self, line: bytes, verb: str, arg: str) -> None:
        """RETR, or TOP with enabletop: the reply is spooled and scanned before it is sent."""
        if verb == "TOP" and not self.cfg.enabletop:
            LOG.warning("Ignoring client TOP request.")
            self.client.write(b"-ERR [SYS/PERM] p3scan: TOP is disabled here (enabletop)\r\n")
            return
        number = arg.partition(" ")[0] or "?"
        if not number.isdigit() or int(number) < 1:
            LOG.warning("%s msg %s (<1) !!!! ", verb, number)
        self.info.messages += 1
        self.forward(line)
        status = self.server_line()
        if not is_ok(status):
            self.client.write(status)
            return
        Retrieval(self, status, number).run()

    def do_capa(self, line: bytes, verb: str, arg: str) -> None:
        """Relay CAPA without the capabilities the proxy cannot honour."""
        self.forward(line)
        reply = [self.server_line()]
        if is_ok(reply[0]):
            hidden = self.hidden_capabilities()
            while True:
                if len(reply) > MAX_CAPA_LINES:
                    raise LineTooLong(self.server.name, f"CAPA reply longer than "
                                                        f"{MAX_CAPA_LINES} lines")
                item = self.server_line()
                if item.rstrip(b"\r\n") == b".":
                    reply.append(item)
                    break
                name = capability_name(item)
                if name in hidden:
                    LOG.debug("Ignoring servers %s capability...", name)
                    continue
                reply.append(item)
        self.client.write(b"".join(reply))

    def hidden_capabilities(self) -> frozenset[str]:
        """STLS always (until TLS is supported), TOP unless enabletop."""
        return frozenset({"STLS"} if self.cfg.enabletop else {"STLS", "TOP"})

    def do_stls(self, line: bytes, verb: str, arg: str) -> None:
        self.client.write(b"-ERR [SYS/PERM] p3scan: STLS is not available through this proxy\r\n")

    def do_auth(self, line: bytes, verb: str, arg: str) -> None:
        """SASL: relay ``+`` continuations and the client's responses until +OK or -ERR."""
        if not arg:
            self.relay_command(line, verb, arg)
            return
        mechanism, _, initial = arg.partition(" ")
        self.forward(line)
        while True:
            status = self.server_line()
            if not status.startswith(b"+") or is_ok(status):
                break
            self.client.write(status)
            response = self.client_line()
            initial = initial or response.decode("latin-1")
            self.forward(response)
        if is_ok(status) and mechanism.upper() == "PLAIN":  # known before the client hears
            self.info.user = sasl_plain_user(initial) or self.info.user
        self.client.write(status)

    def do_user(self, line: bytes, verb: str, arg: str) -> None:
        self.info.user = arg or self.info.user
        LOG.info("USER '%s'", self.info.user)
        self.relay_command(line, verb, arg)

    def do_apop(self, line: bytes, verb: str, arg: str) -> None:
        self.info.user = arg.partition(" ")[0] or self.info.user
        LOG.info("USER '%s'", self.info.user)
        self.relay_command(line, verb, arg)

    def do_quit(self, line: bytes, verb: str, arg: str) -> None:
        self.relay_command(line, verb, arg)
        self.done = True


def client_route(client: Stream, cfg: Settings) -> Route | None:
    """POP3's entry point when the client names its server (useurl): p3scan greets it
    itself and reads the server from its USER; None if the client gives up."""
    return useurl_handshake(client, cfg)


def useurl_capabilities(cfg: Settings) -> bytes:
    """The answer to a CAPA before USER in useurl mode, when there is no server to ask yet.

    fetchmail and poplib ask before they log in; what is listed works through the proxy.
    """
    names = [name for name in USEURL_CAPABILITIES if name != "TOP" or cfg.enabletop]
    lines = "".join(f"{name}\r\n" for name in names)
    return f"+OK Capability list follows\r\n{lines}.\r\n".encode()


def useurl_handshake(client: Stream, cfg: Settings) -> Route | None:
    """Greet the client and wait for ``USER name#host:port``; None if it gives up.

    Until then CAPA gets the proxy's own list, QUIT ends, and every other command gets
    ``-ERR Not Identified`` (as the original).  A USER that cannot be used (malformed, a
    port not in ``useurlports``, p3scan itself, a name that does not resolve) gets ``-ERR``
    with the reason and a log line, and the client may try again.
    """
    client.write(b"+OK\r\n")
    for _attempt in range(USEURL_MAX_TRIES):
        try:
            line = client.readline()
        except LineTooLong:
            LOG.warning("useurl: client line longer than %d bytes before USER", MAX_LINE)
            client.write(b"-ERR [SYS/PERM] p3scan: command line too long\r\n")
            return None
        if not line.endswith(b"\n"):
            return None
        verb, arg = split_command(line)
        if verb == "USER":
            try:
                return useurl_route(arg, cfg)
            except NoDestination as err:
                LOG.critical("Unable to use destination in USER %s: %s", shown(arg), err)
                client.write(f"-ERR p3scan: {err}\r\n".encode("ascii", "replace"))
        elif verb == "CAPA":
            client.write(useurl_capabilities(cfg))
        elif verb == "QUIT":
            client.write(b"+OK bye\r\n")
            return None
        else:
            LOG.debug("client said: %s", shown(line.rstrip(b"\r\n").decode("latin-1")))
            client.write(b"-ERR Not Identified\r\n")
    client.write(b"-ERR too many errors\r\n")
    return None


def shown(text: str, limit: int = 200) -> str:
    """Client text for a log line: quoted, control and 8-bit characters escaped, cut short."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")
