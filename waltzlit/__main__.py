"""``python -m waltzlit fit --config conf/tiny.yaml``"""

from waltzlit.cli import main

if __name__ == "__main__":
    main()
