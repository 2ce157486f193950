"""Building blocks of the search methods: particles on the engine, PRM scoring, resampling, voting."""
