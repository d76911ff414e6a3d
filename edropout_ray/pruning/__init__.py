"""What a state means for a model: units, coupled groups, masked and at-size forwards, physical removal."""
