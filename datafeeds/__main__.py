"""``python -m datafeeds``: list the bundled real data samples (any of them is a valid ``--data``)."""

import sys

from datafeeds.samples import samples_table


def main() -> int:
    print(samples_table())
    print("\nuse a name as --data (or datafeeds.load_ohlcv(name)); provenance and hashes: datafeeds/samples/samples.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
