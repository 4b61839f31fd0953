"""Configuration written by people: profiles, extension declarations, settings."""
