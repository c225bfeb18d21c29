#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::UNIX_EPOCH;

use meshca_tresor::DirectoryStore;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> KeyPolicy {
    KeyPolicy {
        rotation_interval: 24 * HOUR,
        activation_delay: HOUR,
        retention: HOUR,
    }
}

fn at(hours: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + HOUR * hours as u32
}

fn kids(authority: &JwtAuthority) -> Vec<String> {
    authority
        .keys()
        .keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect()
}

#[tokio::test]
async fn replicas_sharing_a_store_sign_with_one_key_set_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CaStore> = Arc::new(DirectoryStore::new(dir.path().join("ca")));
    let a = JwtAuthority::new(store.clone(), policy());
    let b = JwtAuthority::new(store, policy());
    assert!(a.refresh(at(0)).await.unwrap());
    assert!(b.refresh(at(0)).await.unwrap());
    assert_eq!(kids(&a), kids(&b));
    assert_eq!(kids(&a).len(), 1);
    let file = dir.path().join("ca").join(DirectoryStore::JWT_KEYS_FILE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A token one replica signs, the other validates.
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let id = SpiffeId::from_short("ns1/sa1", &td).unwrap();
    let jwt = a
        .sign(
            &id,
            &["vault".to_owned()],
            Duration::from_secs(300),
            None,
            at(0),
        )
        .unwrap();
    assert_eq!(b.validate(&jwt, "vault", &td, at(0)).unwrap().0, id);

    // A day later the first replica to look makes the next key; the other adopts it. Tokens
    // the old key signed still validate until it is dropped.
    assert!(b.refresh(at(24)).await.unwrap());
    assert!(a.refresh(at(24)).await.unwrap());
    assert_eq!(kids(&a), kids(&b));
    assert_eq!(kids(&a).len(), 2);
    assert!(a.validate(&jwt, "vault", &td, at(0)).is_ok());
    assert!(!a.refresh(at(25)).await.unwrap());
    assert!(a.refresh(at(26)).await.unwrap());
    assert_eq!(kids(&a).len(), 1);
    let error = a.validate(&jwt, "vault", &td, at(0)).unwrap_err();
    assert!(error.to_string().contains("unknown kid"), "{error}");
}

#[tokio::test]
async fn damaged_keys_are_reported_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    let file = ca.join(DirectoryStore::JWT_KEYS_FILE);
    std::fs::write(&file, b"{\"version\":1,\"keys\":[{\"kid\":\"a\"").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store: Arc<dyn CaStore> = Arc::new(DirectoryStore::new(&ca));
    let authority = JwtAuthority::new(store, policy());
    let error = authority.refresh(at(0)).await.unwrap_err().to_string();
    assert!(error.contains("unusable"), "{error}");
    assert!(error.contains(&ca.display().to_string()), "{error}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"{\"version\":1,\"keys\":[{\"kid\":\"a\""
    );

    // Keys readable by others are refused like the CA's key.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = authority.refresh(at(0)).await.unwrap_err().to_string();
    assert!(error.contains("chmod") || error.contains("0644"), "{error}");
}
