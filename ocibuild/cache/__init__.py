"""The build cache: which layer a set of inputs made, so the same inputs never build it twice."""
