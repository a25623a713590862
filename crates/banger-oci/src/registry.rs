//! A small registry v2 client (blocking, ureq + rustls): manifests, image
//! indexes and blobs, with anonymous, basic and bearer-token auth.
//!
//! Every byte that comes back is checked against the digest it was asked
//! for while it streams; a blob lands in the [`LayerCache`] only after its
//! digest matched (temp file + rename).

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{self, Challenge, Credentials};
use crate::cache::LayerCache;
use crate::error::{Error, IoContext, Result};
use crate::reference::{Reference, validate_digest};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests and configs are small; anything bigger is not one.
const MAX_MANIFEST: u64 = 8 << 20;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback
    /// registries always are.
    pub insecure_registries: Vec<String>,
    /// Auth files tried in order; see [`auth::default_auth_files`].
    pub auth_files: Vec<PathBuf>,
    pub connect_timeout: Duration,
    /// Longest silence on a connection before the request fails.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            auth_files: auth::default_auth_files(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifestDoc {
    /// Digest of the manifest bytes as served.
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A registry client for one repository.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    /// Current Authorization header (bearer token or basic), if any.
    authorization: Option<String>,
    /// Registries the user allowed over plain HTTP.
    insecure: Vec<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .field("has_credentials", &self.creds.is_some())
            .finish()
    }
}

/// Loopback hosts are reached over plain HTTP, as docker does; anything
/// else only when listed.
pub fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|r| r == registry) {
        return true;
    }
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A token realm may be plain http only on a host that may be reached over
/// plain http at all ([`uses_plain_http`]: loopback or listed); a realm on
/// another host would receive the user's credentials in the clear.
pub fn plain_realm_allowed(realm: &str, insecure: &[String]) -> bool {
    let Some(rest) = realm.strip_prefix("http://") else {
        return true;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    uses_plain_http(host, insecure)
}

impl Client {
    pub fn new(reference: &Reference, opts: &RegistryOptions) -> Result<Self> {
        let host = reference.api_host();
        let scheme = if uses_plain_http(&reference.registry, &opts.insecure_registries)
            || uses_plain_http(host, &opts.insecure_registries)
        {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.read_timeout)
            .user_agent(concat!("banger/", env!("CARGO_PKG_VERSION")))
            .build();
        let creds = auth::lookup(&opts.auth_files, &reference.registry)?;
        Ok(Client {
            agent,
            base: format!("{scheme}://{host}/v2/{}", reference.repository),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            creds,
            authorization: None,
            insecure: opts.insecure_registries.clone(),
        })
    }

    /// GET `url`, answering one auth challenge if the registry sends one.
    fn get(&mut self, url: &str, accept: Option<&str>) -> Result<ureq::Response> {
        let mut answered = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(h) = &self.authorization {
                req = req.set("Authorization", h);
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !answered => {
                    answered = true;
                    let challenge = resp
                        .header("WWW-Authenticate")
                        .and_then(auth::parse_challenge);
                    self.authorization = Some(match challenge {
                        Some(Challenge::Basic) => match &self.creds {
                            Some(c) => c.basic_header(),
                            None => return Err(self.unauthorized(401)),
                        },
                        Some(Challenge::Bearer {
                            realm,
                            service,
                            scope,
                        }) => {
                            let scope = scope
                                .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                            format!("Bearer {}", self.token(&realm, service.as_deref(), &scope)?)
                        }
                        None => return Err(self.unauthorized(401)),
                    });
                }
                Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                    return Err(self.unauthorized(code));
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Error::NotFound {
                        what: url.rsplit('/').next().unwrap_or(url).to_string(),
                        repository: format!("{}/{}", self.registry, self.repository),
                    });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(Error::Http {
                        url: url.to_string(),
                        reason: format!("HTTP {code} {}", resp.status_text()),
                    });
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::Http {
                        url: url.to_string(),
                        reason: t.to_string(),
                    });
                }
            }
        }
    }

    fn unauthorized(&self, status: u16) -> Error {
        Error::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            status,
        }
    }

    /// Fetch a bearer token from the challenge's realm (with basic auth when
    /// we have credentials, anonymously otherwise).
    fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(Error::Http {
                url: realm.to_string(),
                reason: "token realm is not an http(s) URL".into(),
            });
        }
        if !plain_realm_allowed(realm, &self.insecure) {
            return Err(Error::Http {
                url: realm.to_string(),
                reason: "the registry sends its token requests (with your credentials) over \
                         plain http to a host that is not loopback; refusing. Use https, or list \
                         that host under insecure registries if it is really yours"
                    .into(),
            });
        }
        let mut req = self.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.creds {
            req = req.set("Authorization", &c.basic_header());
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code @ (401 | 403), _)) => return Err(self.unauthorized(code)),
            Err(e) => {
                return Err(Error::Http {
                    url: realm.to_string(),
                    reason: format!("token request: {e}"),
                });
            }
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST)
            .read_to_end(&mut body)
            .ctx("read token response from", realm)?;
        let t: Token = serde_json::from_slice(&body).map_err(|e| Error::Http {
            url: realm.to_string(),
            reason: format!("token response is not JSON: {e}"),
        })?;
        t.token.or(t.access_token).ok_or_else(|| Error::Http {
            url: realm.to_string(),
            reason: "token response has no token".into(),
        })
    }

    /// Fetch a manifest or index by tag or digest. Returns (bytes, media
    /// type, digest of the bytes). When asked by digest, the bytes must
    /// hash to it.
    pub fn manifest_bytes(&mut self, reference: &str) -> Result<(Vec<u8>, String, String)> {
        let url = format!("{}/manifests/{reference}", self.base);
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self.get(&url, Some(&accept))?;
        let ct = resp.content_type().to_string();
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(Error::Manifest {
                what: "manifest",
                digest: reference.to_string(),
                reason: format!("larger than {MAX_MANIFEST} bytes"),
            });
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(Error::DigestMismatch {
                expected: reference.to_string(),
                url,
                reason: format!("manifest hashes to {digest}"),
            });
        }
        Ok((body, ct, digest))
    }

    /// Resolve `reference` to a single linux/amd64 image manifest, following
    /// an image index if there is one.
    pub fn resolve(&mut self, reference: &Reference) -> Result<ImageManifestDoc> {
        let (body, ct, digest) = self.manifest_bytes(reference.manifest_ref())?;
        let raw = parse_raw(&body, &digest)?;
        if is_index(&raw, &ct) {
            let list = raw.manifests.unwrap_or_default();
            let chosen = list.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            });
            let Some(chosen) = chosen else {
                let available = list
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::NoPlatform {
                    reference: reference.to_string(),
                    available: if available.is_empty() {
                        "none declared".into()
                    } else {
                        available
                    },
                });
            };
            validate_digest(&chosen.digest)?;
            let (body, ct, digest) = self.manifest_bytes(&chosen.digest.clone())?;
            let raw = parse_raw(&body, &digest)?;
            if is_index(&raw, &ct) {
                return Err(Error::Manifest {
                    what: "manifest",
                    digest,
                    reason: "an index nested in an index is not supported".into(),
                });
            }
            return into_image(raw, digest);
        }
        into_image(raw, digest)
    }

    /// Download a blob into `cache` unless it is there already. The digest
    /// is computed while the bytes stream into a temp file, and the file is
    /// renamed into the cache only if it matches. `progress` gets the bytes
    /// received so far.
    pub fn fetch_blob(
        &mut self,
        cache: &LayerCache,
        desc: &Descriptor,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf> {
        let hex = validate_digest(&desc.digest)?.to_string();
        if let Some(p) = cache.get(&desc.digest)? {
            return Ok(p);
        }
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let resp = self.get(&url, None)?;
        let mut reader = resp.into_reader();
        let mut tmp = cache.temp_file(&hex)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut done: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Http {
                        url,
                        reason: format!("after {done} bytes: {e}"),
                    });
                }
            };
            done += n as u64;
            if done > desc.size {
                return Err(Error::DigestMismatch {
                    expected: desc.digest.clone(),
                    url,
                    reason: format!("more than the {} bytes the manifest declares", desc.size),
                });
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).ctx("write", tmp.path())?;
            progress(done);
        }
        if done != desc.size {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                url,
                reason: format!("{done} bytes, the manifest declares {}", desc.size),
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                url,
                reason: format!("content hashes to sha256:{actual}"),
            });
        }
        cache.commit(tmp, &desc.digest)
    }

    /// A small blob (the image config) in memory, digest-checked.
    pub fn small_blob(&mut self, desc: &Descriptor) -> Result<Vec<u8>> {
        let hex = validate_digest(&desc.digest)?.to_string();
        if desc.size > MAX_MANIFEST {
            return Err(Error::Manifest {
                what: "config",
                digest: desc.digest.clone(),
                reason: format!("declares {} bytes, more than {MAX_MANIFEST}", desc.size),
            });
        }
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let resp = self.get(&url, None)?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(desc.size + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let actual = hex::encode(Sha256::digest(&body));
        if body.len() as u64 != desc.size || actual != hex {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                url,
                reason: format!("{} bytes hashing to sha256:{actual}", body.len()),
            });
        }
        Ok(body)
    }
}

fn parse_raw(body: &[u8], digest: &str) -> Result<RawManifest> {
    let raw: RawManifest = serde_json::from_slice(body).map_err(|e| Error::Manifest {
        what: "manifest",
        digest: digest.to_string(),
        reason: format!("not a valid manifest: {e}"),
    })?;
    if raw.schema_version != Some(2) {
        return Err(Error::Manifest {
            what: "manifest",
            digest: digest.to_string(),
            reason: format!(
                "schemaVersion {:?} is not supported (only Docker v2 schema 2 and OCI)",
                raw.schema_version
            ),
        });
    }
    Ok(raw)
}

fn is_index(raw: &RawManifest, content_type: &str) -> bool {
    let mt = raw.media_type.as_deref().unwrap_or(content_type);
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST || (raw.manifests.is_some() && raw.layers.is_none())
}

fn into_image(raw: RawManifest, digest: String) -> Result<ImageManifestDoc> {
    let bad = |reason: &str| Error::Manifest {
        what: "manifest",
        digest: digest.clone(),
        reason: reason.to_string(),
    };
    let config = raw.config.ok_or_else(|| bad("has no config"))?;
    let layers = raw.layers.ok_or_else(|| bad("has no layers"))?;
    validate_digest(&config.digest)?;
    for l in &layers {
        validate_digest(&l.digest)?;
        let mt = l.media_type.as_str();
        let known = mt.is_empty()
            || mt.starts_with("application/vnd.oci.image.layer.")
            || mt.starts_with("application/vnd.docker.image.rootfs.");
        if !known {
            return Err(bad(&format!(
                "layer {} has media type {mt:?}, which is not an image layer",
                l.digest
            )));
        }
    }
    Ok(ImageManifestDoc {
        digest,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_listed() {
        let none: Vec<String> = vec![];
        assert!(uses_plain_http("127.0.0.1:5000", &none));
        assert!(uses_plain_http("localhost:5000", &none));
        assert!(uses_plain_http("[::1]:5000", &none));
        assert!(!uses_plain_http("registry.lan:5000", &none));
        assert!(!uses_plain_http("docker.io", &none));
        assert!(uses_plain_http(
            "registry.lan:5000",
            &["registry.lan:5000".to_string()]
        ));
    }

    #[test]
    fn bearer_realms_over_plain_http_only_on_loopback_or_listed_hosts() {
        let none: Vec<String> = vec![];
        assert!(plain_realm_allowed("https://auth.docker.io/token", &none));
        assert!(plain_realm_allowed("http://127.0.0.1:5001/token", &none));
        assert!(plain_realm_allowed("http://localhost/token?x=1", &none));
        assert!(!plain_realm_allowed("http://auth.example.com/token", &none));
        assert!(!plain_realm_allowed("http://198.18.0.2:5001/token", &none));
        assert!(
            !plain_realm_allowed("http://127.0.0.1@evil.example/token", &none),
            "userinfo does not make a host loopback"
        );
        assert!(plain_realm_allowed(
            "http://registry.lan:5000/token",
            &["registry.lan:5000".to_string()]
        ));
    }
}
