"""Configs of other tools turned into recipes."""
