-- Accounts: doctors and patients. Emails are stored trimmed and lower-cased, so the unique key is case-blind.
CREATE TABLE users (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    email VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    role ENUM('Doctor', 'Patient') NOT NULL,
    specialty VARCHAR(100) NULL,
    password_hash VARCHAR(100) NOT NULL,
    -- Bumped on every password change: tokens carry it, so older tokens stop working.
    token_version INT UNSIGNED NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_users_email (email),
    KEY idx_users_role_name (role, name),
    KEY idx_users_role_specialty (role, specialty)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
