//! [`Columns`] for PostgreSQL rows: the shared row typing of `store::rows`
//! reads PostgreSQL's values through this.

use crate::store::rows::Columns;
use crate::store::StoreError;
use postgres::Row;

impl Columns for Row {
    type Error = StoreError;

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn invalid(&self, i: usize, what: String) -> StoreError {
        let column = self.columns().get(i).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("column {column}: {what}"))
    }
}
