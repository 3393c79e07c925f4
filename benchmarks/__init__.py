"""mogen's benchmarks. Run each from the repository root as a module: `python -m benchmarks.<name> --help`.

A package (not a folder of scripts) so that `python -m benchmarks.x` finds this one and not the top-level
`benchmarks` package fairscale installs: the current directory comes first on sys.path.
"""
