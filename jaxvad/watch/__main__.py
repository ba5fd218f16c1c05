"""`python -m jaxvad.watch`: see `jaxvad.watch.command`."""

from jaxvad.watch.command import main

main()
