"""sip_hub: integration hub for the Swedish samordnad individuell plan (SIP)."""

__version__ = "0.1.0"
