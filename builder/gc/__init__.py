"""Garbage collection of the store: roots, marking, eviction by last use, and removal by age."""
