//! The handlers every resource family shares: list (paged), get and synchronous delete.
//!
//! A family (live events, a live event's live outputs, streaming endpoints, assets, streaming
//! locators, streaming policies, content key policies) says where its resources are kept in an
//! account, how GET shows one, and what its ARM not-found message calls it; the family's module
//! implements `Family` next to its own rules. Creation, updates, actions and long-running deletes
//! (live events, live outputs, streaming endpoints) differ per family and stay in its module.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;

use super::arm::{self, ArmError, ArmRequest, ArmResult, Reply};
use super::state::{Account, Env};

/// One resource family of an account.
pub(crate) trait Family {
    /// What the account keeps per resource.
    type Item;
    /// The resource as list and GET show it.
    type View: Serialize + Clone;

    /// The collection path ARM names in a not-found message (`liveEvents`, `streamingLocators`).
    fn kind(&self) -> String;

    /// The family's resources in `account`, by lowercased name; an error when the family lives
    /// under a parent resource that does not exist.
    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, Self::Item>, ArmError>;

    /// The resource as list and GET show it (secrets blanked where the family has them).
    fn view(&self, item: &Self::Item) -> Self::View;
}

/// A family whose resources are deleted at once (200, or 204 when absent).
pub(crate) trait Removable: Family {
    fn items_mut<'a>(&self, account: &'a mut Account) -> &'a mut BTreeMap<String, Self::Item>;

    /// Refuses the delete while something depends on the resource; by default nothing does.
    fn check_delete(&self, _account: &Account, _name: &str) -> Result<(), ArmError> {
        Ok(())
    }

    /// Removes what goes with a deleted resource (`key` is its lowercased name).
    fn cascade(&self, _account: &mut Account, _key: &str) {}
}

/// `GET` on the collection: one page, in name order.
pub(crate) fn list<F: Family>(
    family: &F,
    account: &Account,
    request: &ArmRequest<'_>,
    env: &Env<'_>,
    path: &str,
) -> ArmResult {
    let items = family.items(account)?.iter().map(|(key, item)| (key.clone(), family.view(item))).collect();
    arm::page(items, request, env, path)
}

/// `GET` on one resource, its name matched case-insensitively.
pub(crate) fn get<F: Family>(family: &F, account: &Account, name: &str) -> ArmResult {
    let item = family
        .items(account)?
        .get(&name.to_lowercase())
        .ok_or_else(|| ArmError::not_found(&family.kind(), name, &account.id))?;
    Ok(Reply::ok(family.view(item)))
}

/// `DELETE` on one resource: 200 when it was deleted, 204 when there was none.
pub(crate) fn delete<F: Removable>(family: &F, account: &mut Account, name: &str) -> ArmResult {
    family.check_delete(account, name)?;
    let key = name.to_lowercase();
    match family.items_mut(account).remove(&key) {
        Some(_) => {
            family.cascade(account, &key);
            Ok(Reply::empty(StatusCode::OK))
        }
        None => Ok(Reply::empty(StatusCode::NO_CONTENT)),
    }
}
