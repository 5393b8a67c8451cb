"""Directory services: where Directory messages live, addressed by digest."""
