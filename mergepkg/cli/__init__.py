"""The command line: typer commands that parse arguments, call the library and render
with rich. Data goes to stdout; progress, messages and errors go to stderr."""
