"""mail2sms bridge: turns e-mail into SMS (Allmysms Mail2SMS subject format)."""

__version__ = "0.1.0"
