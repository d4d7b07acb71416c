-- Machine clients: a route's `required_scopes` judges sessions by the scope their
-- provider granted. Sessions from before hold NULL: the scope that was asked for.
ALTER TABLE sessions ADD COLUMN granted_scope TEXT;
