"""`python -m jaxvad.explain`: see `jaxvad.explain.command`."""

from jaxvad.explain.command import main

main()
