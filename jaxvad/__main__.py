"""`python -m jaxvad`: the memory allocator jaxvad's commands run on here (`jaxvad.allocator`)."""

from jaxvad import allocator

print(allocator.describe())
