"""qat: quaternion anti-transfer learning for speech emotion recognition."""

__version__ = "0.1.0"
