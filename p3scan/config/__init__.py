"""The option table, value checks, the 2.3.2 file syntax, typed settings."""
