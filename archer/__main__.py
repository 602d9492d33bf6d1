"""`python -m archer` is the same as the `archer` command."""

from archer.cli.main import main

if __name__ == "__main__":
    main()
