"""p3scan: a transparent mail-scanning proxy for POP3, POP3S and SMTP."""

__version__ = "3.0.0"
PROGNAME = "P3Scan"
