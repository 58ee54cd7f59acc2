"""``python -m datafeeds``: list the bundled real data samples and universes (any of them is a valid ``--data``)."""

import sys

from datafeeds.samples import samples_table
from datafeeds.universe import universes_table


def main() -> int:
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
