-- Run once by the postgres image when its volume is new: the Prefect server's database, beside the registry's
-- (POSTGRES_DB). Both belong to POSTGRES_USER.
CREATE DATABASE prefect;
