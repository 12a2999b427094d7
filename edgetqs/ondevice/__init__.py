"""Code that runs on the device: the driver, the closed loop it shares with the host, and one session class
per runtime. These files import nothing from edgetqs (only numpy and one runtime): they are copied as they are."""
