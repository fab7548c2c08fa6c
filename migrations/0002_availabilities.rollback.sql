DROP TABLE availabilities
