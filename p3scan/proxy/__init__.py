"""Protocol sessions: POP3 and SMTP relays and their message objects."""
