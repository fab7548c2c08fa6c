DROP TABLE appointments
