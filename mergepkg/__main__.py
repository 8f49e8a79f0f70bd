"""`python -m mergepkg`: the `mergepkg` command."""

from mergepkg.cli.app import run

if __name__ == "__main__":
    run()
