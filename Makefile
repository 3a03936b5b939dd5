# p3scan — build, try, test and install.
#
#   make run        start p3scan in the foreground from conf/p3scan-local.conf (no root needed)
#   make test       install what the tests need (Debian packages too when root) and run them all
#   make install    install under $(DESTDIR)$(PREFIX) and /etc, /var (honours DESTDIR)
#   make uninstall  remove what install put there (an edited p3scan.conf and quarantine stay)

PREFIX     ?= /usr
DESTDIR    ?=
SBINDIR    ?= $(PREFIX)/sbin
LIBDIR     ?= $(PREFIX)/lib/p3scan
MANDIR     ?= $(PREFIX)/share/man
CONFDIR    ?= /etc/p3scan
INITDIR    ?= /etc/init.d
RCDIR      ?= /etc/rc.d
PIDDIR     ?= /var/run/p3scan
SPOOLDIR   ?= /var/spool/p3scan
P3USER     ?= mail
PYTHON     ?= python3

# The notification language, as the original: `make LANG=ge install`. A locale such as
# de_DE.UTF-8 from the environment is cut to "de"; a language without a template falls back to en.
MAILLANG   := $(firstword $(subst _, ,$(subst ., ,$(LANG))))
MAILLANG   := $(if $(wildcard templates/p3scan-$(MAILLANG).mail),$(MAILLANG),en)

VENV       := .venv
VPY        := $(VENV)/bin/python
RUNDIR     := .run
RUNCONF    ?= conf/p3scan-local.conf
PYTEST_ARGS ?=

.PHONY: all run test unit lint deps venv install uninstall bench soak fuzz clean

all: venv

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	@if [ "$$(id -u)" != 0 ]; then mkdir -p $(RUNDIR)/spool/children $(RUNDIR)/spool/notify; fi
	$(VENV)/bin/p3scan -f $(RUNCONF)

deps:
	@sh tests/debian-packages.sh

test: deps venv
	$(VPY) -m ruff check p3scan tests bench setup.py
	$(VPY) -m mypy p3scan
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(VPY) -m pytest -m 'not integration' $(PYTEST_ARGS)

lint: venv
	$(VPY) -m ruff check p3scan tests bench setup.py
	$(VPY) -m mypy p3scan
	$(VENV)/bin/lint-imports

bench: deps venv
	$(VPY) bench/pop3_passthrough.py

# 60 s of POP3 and SMTP mixed at 5 x maxchilds clients (root): 0 errors, no fd or process leak.
SOAK_ARGS ?= --duration 60 --maxchilds 4
soak: deps venv
	$(VPY) bench/soak.py $(SOAK_ARGS)

# The fuzz targets of tests/fuzz with thousands of examples each (make test runs them briefly).
fuzz: venv
	P3SCAN_FUZZ=long $(VPY) -m pytest tests/fuzz --timeout=7200 $(PYTEST_ARGS)

install:
	$(eval PYEXE := $(shell $(PYTHON) -c 'import sys; print(sys.executable)'))
	$(PYTHON) -m pip install --quiet --no-compile --upgrade --target "$(DESTDIR)$(LIBDIR)" .
	rm -rf "$(DESTDIR)$(LIBDIR)/bin"
	install -d "$(DESTDIR)$(SBINDIR)"
	sed -e 's|@PYTHON@|$(PYEXE)|' \
	  -e "s|@LIBDIR_FROM_SBIN@|$$($(PYTHON) -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' '$(LIBDIR)' '$(SBINDIR)')|" \
	  init.d/p3scan.in > "$(DESTDIR)$(SBINDIR)/p3scan"
	chmod 0755 "$(DESTDIR)$(SBINDIR)/p3scan"
	install -d -m 0755 "$(DESTDIR)$(CONFDIR)"
	@if [ -e "$(DESTDIR)$(CONFDIR)/p3scan.conf" ]; then \
	  echo "keeping the existing $(DESTDIR)$(CONFDIR)/p3scan.conf"; \
	else \
	  install -m 0644 conf/p3scan.conf "$(DESTDIR)$(CONFDIR)/p3scan.conf"; \
	fi
	install -m 0644 templates/p3scan-*.mail "$(DESTDIR)$(CONFDIR)/"
	@if [ -e "$(DESTDIR)$(CONFDIR)/p3scan.mail" ] && [ ! -L "$(DESTDIR)$(CONFDIR)/p3scan.mail" ]; then \
	  echo "keeping the existing template $(DESTDIR)$(CONFDIR)/p3scan.mail"; \
	else \
	  ln -sfn p3scan-$(MAILLANG).mail "$(DESTDIR)$(CONFDIR)/p3scan.mail"; \
	fi
	install -d "$(DESTDIR)$(INITDIR)" "$(DESTDIR)$(RCDIR)"
	install -m 0755 init.d/p3scan "$(DESTDIR)$(INITDIR)/p3scan"
	install -m 0755 init.d/rc.p3scan "$(DESTDIR)$(RCDIR)/rc.p3scan"
	install -d "$(DESTDIR)$(MANDIR)/man8" "$(DESTDIR)$(MANDIR)/man5"
	install -m 0644 man/p3scan.8 "$(DESTDIR)$(MANDIR)/man8/p3scan.8"
	install -m 0644 man/p3scan.conf.5 "$(DESTDIR)$(MANDIR)/man5/p3scan.conf.5"
	install -d -m 0700 "$(DESTDIR)$(PIDDIR)" "$(DESTDIR)$(SPOOLDIR)" \
	  "$(DESTDIR)$(SPOOLDIR)/children" "$(DESTDIR)$(SPOOLDIR)/notify"
	@if [ "$$(id -u)" = 0 ] && id "$(P3USER)" >/dev/null 2>&1; then \
	  chown "$(P3USER):" "$(DESTDIR)$(PIDDIR)" "$(DESTDIR)$(SPOOLDIR)" \
	    "$(DESTDIR)$(SPOOLDIR)/children" "$(DESTDIR)$(SPOOLDIR)/notify"; \
	fi

uninstall:
	rm -f "$(DESTDIR)$(SBINDIR)/p3scan" "$(DESTDIR)$(INITDIR)/p3scan" "$(DESTDIR)$(RCDIR)/rc.p3scan"
	rm -f "$(DESTDIR)$(MANDIR)/man8/p3scan.8" "$(DESTDIR)$(MANDIR)/man5/p3scan.conf.5"
	rm -rf "$(DESTDIR)$(LIBDIR)"
	for t in templates/p3scan-*.mail; do rm -f "$(DESTDIR)$(CONFDIR)/$$(basename $$t)"; done
	@if [ -L "$(DESTDIR)$(CONFDIR)/p3scan.mail" ]; then rm -f "$(DESTDIR)$(CONFDIR)/p3scan.mail"; fi
	@if cmp -s conf/p3scan.conf "$(DESTDIR)$(CONFDIR)/p3scan.conf"; then \
	  rm -f "$(DESTDIR)$(CONFDIR)/p3scan.conf"; \
	elif [ -e "$(DESTDIR)$(CONFDIR)/p3scan.conf" ]; then \
	  echo "keeping the edited $(DESTDIR)$(CONFDIR)/p3scan.conf"; \
	fi
	-rmdir "$(DESTDIR)$(CONFDIR)" "$(DESTDIR)$(PIDDIR)" 2>/dev/null
	-rmdir "$(DESTDIR)$(SPOOLDIR)/children" "$(DESTDIR)$(SPOOLDIR)/notify" "$(DESTDIR)$(SPOOLDIR)" 2>/dev/null
	@if [ -d "$(DESTDIR)$(SPOOLDIR)" ]; then echo "keeping $(DESTDIR)$(SPOOLDIR): it holds quarantined mail"; fi

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis $(RUNDIR)
