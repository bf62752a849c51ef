"""Site data: MongoDB sensor data per site, site schemas, and CityLearn datasets built from them."""
