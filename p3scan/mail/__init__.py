"""Mail as data: spool, codec, context, MIME splitting, quarantine, notices."""
