//! The PKI mount's issuers (multi-issuer Vault and OpenBao): which roots the trust bundle
//! carries, which issuer meshca signs with, and a change of the mount's default issuer made
//! outside meshca.
//!
//! [`Issuers`] is the state, kept by the provider and changed only through its methods, so the
//! rules are pure and unit-tested here:
//! - the bundle carries the root of every issuer listed in the mount (not only the default's),
//!   so a new default issuer never drops the root that signed the leaves proxies hold; and every
//!   root that signed a leaf meshca issued, until that leaf expires, even if its issuer is
//!   deleted from the mount meanwhile;
//! - meshca signs with one issuer, pinned (`<pki>/issuer/<id>/sign/<role>`); when the mount's
//!   target issuer (its default, or the role's `issuer_ref`) is another, that is an
//!   [`IssuerSwitch`] the daemon adopts only once its proxies trust the new root;
//! - a root rotation driven by `meshca rotate root` is kept in the mount itself, as issuer
//!   names ([`VaultRotation`]): Vault refuses two issuers of one name, which makes `start` a
//!   compare-and-swap, and every daemon and CLI run reads the same state with the listing.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

/// One issuer of the mount, as meshca uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerInfo {
    /// Vault's issuer ID.
    pub id: String,
    /// Its `issuer_name` (empty when unnamed).
    pub name: String,
    /// The root its chain leads to (itself for a root issuer).
    pub root: CertificateDer<'static>,
    /// The root's NotAfter: an expired root verifies nothing and leaves the bundle.
    pub root_not_after: SystemTime,
}

impl fmt::Debug for IssuerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for IssuerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str(&self.id)
        } else {
            write!(f, "{} ({})", self.name, self.id)
        }
    }
}

/// The mount's target issuer is not the one meshca signs with: Vault's default issuer was
/// changed (by `meshca rotate root` or by someone else). meshca keeps signing with `from` until
/// every proxy trusts `to`'s root, then [adopts](crate::VaultProvider::adopt) `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSwitch {
    /// The issuer meshca signs with now (`None`: it is no longer in the mount).
    pub from: Option<IssuerInfo>,
    /// The mount's target issuer.
    pub to: IssuerInfo,
}

/// The name `meshca rotate root start` gives the new issuer (stage 1).
pub const NEXT_ISSUER: &str = "meshca-next";
/// Stage 2: the new issuer is named `meshca-next-<Unix time stage 2 began>-<old issuer ID>`.
const ISSUING_PREFIX: &str = "meshca-next-";
/// Finished: the old issuer is renamed `meshca-retired-<Unix time>`, and its root leaves the
/// bundles (the issuer stays in the mount).
pub const RETIRED_PREFIX: &str = "meshca-retired-";
/// Finished: the new issuer is renamed `meshca-root-<Unix time>`.
pub const ROOT_PREFIX: &str = "meshca-root-";

/// A root rotation driven by `meshca rotate root`, as the mount's issuer names say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultRotation {
    /// Stage 1: the new issuer ([`NEXT_ISSUER`]) is in every bundle; the mount's target issuer
    /// (`old`) signs.
    Trusting {
        /// The new issuer.
        new: IssuerInfo,
        /// The mount's target issuer, if it is another.
        old: Option<IssuerInfo>,
    },
    /// Stage 2: the new issuer is the default (daemons sign with it once their proxies trust
    /// it); the old root stays in the bundles until the longest leaf lifetime after `since`.
    Issuing {
        /// The new issuer.
        new: IssuerInfo,
        /// The old issuer's ID, from the new issuer's name.
        old_id: String,
        /// The old issuer, unless it was deleted.
        old: Option<IssuerInfo>,
        /// When stage 2 began.
        since: SystemTime,
    },
}

/// One entry of `LIST <pki>/issuers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) is_default: bool,
}

/// The provider's view of the mount's issuers; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Issuers {
    /// Each issuer read, by ID (an issuer's certificate never changes, so each is read once).
    known: HashMap<String, IssuerInfo>,
    /// Issuer IDs at the last listing, in Vault's order; `None` until listed (or when the mount
    /// cannot be listed: then the bundle comes from `cert/ca_chain`).
    listed: Option<Vec<String>>,
    /// The mount's default issuer at the last listing.
    default: Option<String>,
    /// The role's `issuer_ref` when it names an issuer (not `default`): the target then.
    role_issuer: Option<String>,
    /// The issuer meshca signs with; `None` until known (then `sign/<role>` signs).
    signing: Option<String>,
    /// Roots that signed leaves meshca issued, each with the latest NotAfter of those leaves.
    remembered: Vec<(CertificateDer<'static>, SystemTime)>,
    /// The anchors of `cert/ca_chain` last used for an unlisted mount.
    fallback: Vec<CertificateDer<'static>>,
}

impl Issuers {
    /// State for a role whose `issuer_ref` is `role_issuer` (`default` or unset: the mount's
    /// default issuer signs for it).
    pub(crate) fn new(role_issuer: Option<&str>) -> Self {
        Self {
            role_issuer: role_issuer
                .map(str::trim)
                .filter(|r| !r.is_empty() && *r != "default")
                .map(str::to_owned),
            ..Self::default()
        }
    }

    /// Takes a listing in; returns the IDs whose certificate is still to be read. The first
    /// listing makes the target issuer the signing one (nothing was served under any yet).
    pub(crate) fn list(&mut self, listing: &[Listed]) -> Vec<String> {
        self.default = listing.iter().find(|l| l.is_default).map(|l| l.id.clone());
        self.listed = Some(listing.iter().map(|l| l.id.clone()).collect());
        for entry in listing {
            // Names can be changed; the certificate cannot.
            if let Some(known) = self.known.get_mut(&entry.id) {
                known.name.clone_from(&entry.name);
            }
        }
        listing
            .iter()
            .filter(|l| !self.known.contains_key(&l.id))
            .map(|l| l.id.clone())
            .collect()
    }

    /// The mount cannot be listed (a token without `list` on `<pki>/issuers`, or a Vault
    /// before multi-issuer): the bundle comes from `cert/ca_chain`, `sign/<role>` signs.
    pub(crate) fn unlisted(&mut self) {
        self.listed = None;
        self.signing = None;
    }

    /// The root rotation the issuer names record, if any (see [`VaultRotation`]).
    pub(crate) fn rotation(&self) -> Option<VaultRotation> {
        let listed = self.listed.as_ref()?;
        let issuers = listed.iter().filter_map(|id| self.known.get(id));
        for issuer in issuers {
            if issuer.name == NEXT_ISSUER {
                return Some(VaultRotation::Trusting {
                    new: issuer.clone(),
                    old: self.target().filter(|t| t.id != issuer.id).cloned(),
                });
            }
            let Some((since, old_id)) = issuer
                .name
                .strip_prefix(ISSUING_PREFIX)
                .and_then(|rest| rest.split_once('-'))
            else {
                continue;
            };
            let Ok(since) = since.parse::<u64>() else {
                continue;
            };
            return Some(VaultRotation::Issuing {
                new: issuer.clone(),
                old_id: old_id.to_owned(),
                old: listed
                    .iter()
                    .find(|id| *id == old_id)
                    .and_then(|id| self.known.get(id))
                    .cloned(),
                since: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since),
            });
        }
        None
    }

    /// Whether the last listing succeeded.
    pub(crate) fn is_listed(&self) -> bool {
        self.listed.is_some()
    }

    /// Records an issuer read.
    pub(crate) fn insert(&mut self, issuer: IssuerInfo) {
        self.known.insert(issuer.id.clone(), issuer);
    }

    /// The target issuer: the role's `issuer_ref` (by ID or name) if it names one, else the
    /// mount's default; `None` until listed and read.
    pub(crate) fn target(&self) -> Option<&IssuerInfo> {
        let listed = self.listed.as_ref()?;
        let id = match &self.role_issuer {
            Some(reference) => listed.iter().find(|id| {
                *id == reference
                    || self
                        .known
                        .get(*id)
                        .is_some_and(|issuer| &issuer.name == reference)
            })?,
            None => self.default.as_ref()?,
        };
        self.known.get(id)
    }

    /// Makes the target issuer the signing one if none is yet (first listing, or the signing
    /// issuer left the mount); returns it when that happened.
    pub(crate) fn adopt_if_unset(&mut self) -> Option<IssuerInfo> {
        let listed = self.listed.as_ref()?;
        if let Some(signing) = &self.signing
            && listed.contains(signing)
        {
            return None;
        }
        let target = self.target()?.clone();
        self.signing = Some(target.id.clone());
        Some(target)
    }

    /// The issuer meshca signs with, when known.
    pub(crate) fn signing(&self) -> Option<&IssuerInfo> {
        self.signing.as_ref().and_then(|id| self.known.get(id))
    }

    /// Forgets the signing issuer (it is gone from the mount): `sign/<role>` signs until the
    /// next listing adopts the target.
    pub(crate) fn drop_signing(&mut self) {
        self.signing = None;
    }

    /// The target issuer, when it is not the one meshca signs with.
    pub(crate) fn switch(&self) -> Option<IssuerSwitch> {
        let target = self.target()?;
        if self.signing.as_deref() == Some(target.id.as_str()) {
            return None;
        }
        Some(IssuerSwitch {
            from: self.signing().cloned(),
            to: target.clone(),
        })
    }

    /// Signs with `switch.to` from now on, if it is still the target; returns whether it is.
    pub(crate) fn adopt(&mut self, switch: &IssuerSwitch) -> bool {
        if self.target().map(|t| &t.id) != Some(&switch.to.id) {
            return false;
        }
        self.signing = Some(switch.to.id.clone());
        true
    }

    /// Remembers that `root` signed a leaf valid until `not_after` — only a root already
    /// trusted (an issuer's of the mount, or `cert/ca_chain`'s): a leaf under any other root is
    /// refused by validation, and must not make its root trusted by being issued.
    pub(crate) fn remember(&mut self, root: &CertificateDer<'static>, not_after: SystemTime) {
        if let Some((_, until)) = self.remembered.iter_mut().find(|(r, _)| r == root) {
            *until = (*until).max(not_after);
            return;
        }
        let trusted =
            self.known.values().any(|issuer| &issuer.root == root) || self.fallback.contains(root);
        if trusted {
            self.remembered.push((root.clone(), not_after));
        }
    }

    /// The roots to trust at `now`: every listed issuer's unexpired root (or `fallback`, the
    /// anchors of `cert/ca_chain`, when the mount cannot be listed), then every remembered root
    /// whose last leaf has not expired. Remembered roots past that are forgotten.
    pub(crate) fn bundle(
        &mut self,
        now: SystemTime,
        fallback: Vec<CertificateDer<'static>>,
    ) -> Vec<CertificateDer<'static>> {
        let mut roots = match &self.listed {
            Some(listed) => listed
                .iter()
                .filter_map(|id| self.known.get(id))
                .filter(|issuer| issuer.root_not_after > now)
                .filter(|issuer| !issuer.name.starts_with(RETIRED_PREFIX))
                .map(|issuer| issuer.root.clone())
                .collect(),
            None => {
                self.fallback.clone_from(&fallback);
                fallback
            }
        };
        self.remembered.retain(|(_, until)| *until > now);
        for (root, _) in &self.remembered {
            if !roots.contains(root) {
                roots.push(root.clone());
            }
        }
        roots
    }
}

/// Whether `id` may go into a URL path as it is (Vault's issuer IDs are UUIDs).
pub(crate) fn url_safe(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn root(n: u8) -> CertificateDer<'static> {
        CertificateDer::from(vec![n; 4])
    }

    fn issuer(id: &str, n: u8, until: SystemTime) -> IssuerInfo {
        IssuerInfo {
            id: id.into(),
            name: format!("name-{id}"),
            root: root(n),
            root_not_after: until,
        }
    }

    fn listed(ids: &[&str], default: &str) -> Vec<Listed> {
        ids.iter()
            .map(|id| Listed {
                id: (*id).into(),
                name: format!("name-{id}"),
                is_default: *id == default,
            })
            .collect()
    }

    fn read_all(state: &mut Issuers, listing: &[Listed], far: SystemTime) {
        for id in state.list(listing) {
            let n = id.as_bytes()[0];
            state.insert(issuer(&id, n, far));
        }
    }

    #[test]
    fn a_new_default_is_trusted_at_once_and_signs_only_once_adopted() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let far = now + Duration::from_secs(86_400);
        let mut state = Issuers::new(None);
        read_all(&mut state, &listed(&["a"], "a"), far);
        assert_eq!(state.adopt_if_unset().unwrap().id, "a");
        assert_eq!(state.switch(), None);
        assert_eq!(state.bundle(now, vec![]), [root(b'a')]);

        // A second issuer appears, then becomes the default outside meshca.
        read_all(&mut state, &listed(&["a", "b"], "a"), far);
        assert_eq!(state.bundle(now, vec![]), [root(b'a'), root(b'b')]);
        assert_eq!(state.switch(), None);
        read_all(&mut state, &listed(&["a", "b"], "b"), far);
        assert_eq!(
            state.adopt_if_unset(),
            None,
            "a still exists: no silent switch"
        );
        let switch = state.switch().unwrap();
        assert_eq!(switch.from.as_ref().unwrap().id, "a");
        assert_eq!(switch.to.id, "b");
        assert_eq!(state.signing().unwrap().id, "a");

        assert!(state.adopt(&switch));
        assert_eq!(state.signing().unwrap().id, "b");
        assert_eq!(state.switch(), None);
        // A switch that is no longer the target is not adopted.
        read_all(&mut state, &listed(&["a", "b"], "a"), far);
        assert!(!state.adopt(&switch.clone()));
    }

    #[test]
    fn a_deleted_issuers_root_stays_while_leaves_it_signed_live() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let far = now + Duration::from_secs(86_400);
        let mut state = Issuers::new(None);
        read_all(&mut state, &listed(&["a", "b"], "b"), far);
        state.remember(&root(b'a'), now + Duration::from_secs(30));
        state.remember(&root(b'a'), now + Duration::from_secs(10));
        // "a" is deleted from the mount.
        read_all(&mut state, &listed(&["b"], "b"), far);
        assert_eq!(state.bundle(now, vec![]), [root(b'b'), root(b'a')]);
        assert_eq!(
            state.bundle(now + Duration::from_secs(29), vec![]),
            [root(b'b'), root(b'a')]
        );
        assert_eq!(
            state.bundle(now + Duration::from_secs(30), vec![]),
            [root(b'b')]
        );
    }

    #[test]
    fn the_signing_issuer_leaving_the_mount_makes_the_target_sign() {
        let now = SystemTime::UNIX_EPOCH;
        let far = now + Duration::from_secs(86_400);
        let mut state = Issuers::new(None);
        read_all(&mut state, &listed(&["a", "b"], "a"), far);
        state.adopt_if_unset();
        read_all(&mut state, &listed(&["b"], "b"), far);
        assert_eq!(state.adopt_if_unset().unwrap().id, "b");
    }

    #[test]
    fn expired_roots_leave_and_an_unlisted_mount_uses_its_ca_chain() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut state = Issuers::new(None);
        for id in state.list(&listed(&["a", "b"], "b")) {
            let until = if id == "a" {
                now
            } else {
                now + Duration::from_secs(1)
            };
            state.insert(issuer(&id, id.as_bytes()[0], until));
        }
        assert_eq!(state.bundle(now, vec![]), [root(b'b')]);
        state.unlisted();
        assert_eq!(state.bundle(now, vec![root(b'c')]), [root(b'c')]);
        state.remember(&root(b'c'), now + Duration::from_secs(5));
        // A root nobody trusted is not trusted for having signed a leaf.
        state.remember(&root(b'x'), now + Duration::from_secs(5));
        assert_eq!(
            state.bundle(now, vec![root(b'd')]),
            [root(b'd'), root(b'c')]
        );
        assert_eq!(state.switch(), None);
        assert!(state.signing().is_none());
    }

    #[test]
    fn a_role_issuer_ref_is_the_target_by_id_or_name() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        let mut state = Issuers::new(Some("name-b"));
        read_all(&mut state, &listed(&["a", "b"], "a"), far);
        assert_eq!(state.adopt_if_unset().unwrap().id, "b");
        let mut state = Issuers::new(Some("default"));
        read_all(&mut state, &listed(&["a", "b"], "a"), far);
        assert_eq!(state.adopt_if_unset().unwrap().id, "a");
    }

    fn named(state: &mut Issuers, listing: &[(&str, &str, bool)], far: SystemTime) {
        let listing: Vec<Listed> = listing
            .iter()
            .map(|(id, name, is_default)| Listed {
                id: (*id).into(),
                name: (*name).into(),
                is_default: *is_default,
            })
            .collect();
        for id in state.list(&listing) {
            state.insert(issuer(&id, id.as_bytes()[0], far));
        }
        for entry in &listing {
            state
                .known
                .get_mut(&entry.id)
                .unwrap()
                .name
                .clone_from(&entry.name);
        }
    }

    #[test]
    fn the_rotation_stage_is_read_from_issuer_names_and_retired_roots_leave() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let far = now + Duration::from_secs(86_400);
        let mut state = Issuers::new(None);
        named(&mut state, &[("a", "", true)], far);
        assert_eq!(state.rotation(), None);
        named(
            &mut state,
            &[("a", "", true), ("b", NEXT_ISSUER, false)],
            far,
        );
        match state.rotation().unwrap() {
            VaultRotation::Trusting { new, old } => {
                assert_eq!(new.id, "b");
                assert_eq!(old.unwrap().id, "a");
            }
            other @ VaultRotation::Issuing { .. } => panic!("{other:?}"),
        }
        named(
            &mut state,
            &[("a", "", false), ("b", "meshca-next-1000-a", true)],
            far,
        );
        match state.rotation().unwrap() {
            VaultRotation::Issuing {
                new,
                old_id,
                old,
                since,
            } => {
                assert_eq!(new.id, "b");
                assert_eq!(old_id, "a");
                assert_eq!(old.unwrap().id, "a");
                assert_eq!(since, SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
            }
            other @ VaultRotation::Trusting { .. } => panic!("{other:?}"),
        }
        assert_eq!(state.bundle(now, vec![]), [root(b'a'), root(b'b')]);
        named(
            &mut state,
            &[
                ("a", "meshca-retired-2000", false),
                ("b", "meshca-root-2000", true),
            ],
            far,
        );
        assert_eq!(state.rotation(), None);
        assert_eq!(state.bundle(now, vec![]), [root(b'b')]);
    }

    #[test]
    fn only_plain_ids_go_into_paths() {
        assert!(url_safe("bf8af85e-b643-129a-fa59-325442272a00"));
        assert!(!url_safe("../sys"));
        assert!(!url_safe(""));
    }
}
