"""tansaku on a Ray cluster: Ray Data builds the shards, Ray Serve serves them.

Nothing outside this package imports Ray. Install it with ``pip install 'tansaku[ray]'``.
"""
