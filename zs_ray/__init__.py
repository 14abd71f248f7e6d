"""zs-ray: Ray-native ZeroSearch — train LLM search agents with a simulated search engine."""

__version__ = "0.1.0"
