"""The model server: the BentoML service around the dataplane, and ``mlrollout serve``."""
