-- name: list_doctors
SELECT id, name, specialty, timezone, created_at
FROM users
WHERE role = 'Doctor'
  AND (%(name_like)s IS NULL OR name LIKE %(name_like)s)
  AND (%(specialty)s IS NULL OR specialty = %(specialty)s)
ORDER BY name, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_doctors
SELECT COUNT(*)
FROM users
WHERE role = 'Doctor'
  AND (%(name_like)s IS NULL OR name LIKE %(name_like)s)
  AND (%(specialty)s IS NULL OR specialty = %(specialty)s);

-- name: find_doctor
SELECT id, name, specialty, timezone, created_at
FROM users WHERE id = %(id)s AND role = 'Doctor';

-- name: update_doctor_specialty
UPDATE users SET specialty = %(specialty)s WHERE id = %(id)s AND role = 'Doctor';
