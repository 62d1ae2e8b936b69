"""The ModelsLab API: the answer envelopes, the HTTP transport with its retry loop, the calls."""
