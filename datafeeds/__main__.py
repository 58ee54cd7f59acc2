"""``python -m datafeeds``: list the bundled real data samples and universes (any of them is a valid ``--data``)."""

import sys

from datafeeds.cli import ArgumentParser, run_command
from datafeeds.samples import samples_table
from datafeeds.universe import universes_table


def build_parser() -> ArgumentParser:
    return ArgumentParser(prog="python -m datafeeds", description="List the bundled data samples and universes: "
                          "any name listed is a valid --data of every command.")


def main(argv: list[str] | None = None) -> int:
    """The command: parse, print the listing; the exit status."""
    return run_command(_main, argv)


def _main(argv: list[str]) -> int:
    build_parser().parse_args(argv)
    print(samples_table())
    print("\nuse a name as --data (or datafeeds.load_ohlcv(name)); "
          "provenance and hashes: datafeeds/samples/samples.json")
    print()
    print(universes_table())
    print("\nuse a universe name, a directory, a glob or a comma list of files or sample names as --data "
          "(or datafeeds.load_universe(source)); one instrument per file: datafeeds/samples/universes.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
