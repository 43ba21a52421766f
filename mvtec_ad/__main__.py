"""`python -m mvtec_ad ...`: see mvtec_ad.cli."""

from mvtec_ad.cli import main

if __name__ == "__main__":
    main()
