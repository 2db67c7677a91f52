"""The shared core every path imports: the contract, the bundle, the one scoring function and its tree walk,
the account-state fold, times, paths, opening the store, and the `skewless` command's root (cli.py)."""
