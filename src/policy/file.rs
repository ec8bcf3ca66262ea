//! Policy files: TOML → validated `PolicyDoc`. Every error names the file, the
//! line and column, and the field, and says what would be valid. Unknown keys
//! are errors. A file with any error yields no document at all.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::duration::{self, RawDuration};
use super::glob::Glob;
use crate::domain::{
    CredentialSpec, IdpKeys, IdpSpec, OpenTokFormat, Provider, Role, SecretRef, check_jwks_url,
};
use crate::domain::{MAX_LABEL_KEY, MAX_LABEL_VALUE, is_label_key};
use crate::domain::{Rate, Rates};

/// The longest `max_ttl`/`default_ttl` a rule may have: the service's 30 days.
pub const MAX_TTL: i64 = 30 * 86_400;
/// `defaults.ttl` when a file gives none: one hour (short, because a policy
/// that forgot it should not hand out day-long tokens).
pub const DEFAULT_TTL: i64 = 3600;

/// A validation error with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Whose word a user or group subject takes: identities carry their source,
/// so `alice` vouched by one identity provider is not `alice` vouched by the
/// app or by another provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Vouched by the tenant's app (API-key callers): `app:user:<id>`, or the
    /// bare `user:<id>` in a policy without identity providers.
    App,
    /// Vouched by this identity provider: `idp:<name>:user:<id>`.
    Idp(String),
    /// Any source, spelled explicitly: `*:user:<id>`.
    Any,
}

/// Who a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Any,
    User(Source, String),
    Group(Source, String),
}

/// The longest user id or group name a subject may name (as for identities).
const MAX_SUBJECT_LEN: usize = 256;

/// Parses one rule subject. `idps` are the provider names the file declares:
/// when there are any, a user or group subject must name its source.
fn parse_subject(v: &str, idps: &[String]) -> Result<Subject, String> {
    const FORMS: &str = "use \"*\", \"app:user:<id>\", \"app:group:<name>\", \"idp:<provider>:user:<id>\", \"idp:<provider>:group:<name>\", or \"*:user:<id>\" / \"*:group:<name>\" for any source";
    if v == "*" {
        return Ok(Subject::Any);
    }
    let (source, rest, explicit) = if let Some(r) = v.strip_prefix("app:") {
        (Source::App, r, true)
    } else if let Some(r) = v.strip_prefix("*:") {
        (Source::Any, r, true)
    } else if let Some(r) = v.strip_prefix("idp:") {
        let Some((name, r)) = r.split_once(':') else {
            return Err(format!("{v:?} is not a subject: {FORMS}"));
        };
        if !idps.iter().any(|p| p == name) {
            return Err(if idps.is_empty() {
                format!(
                    "{v:?} names identity provider {name:?}, but this file declares no [[identity_providers]]"
                )
            } else {
                format!(
                    "{v:?} names identity provider {name:?}, which this file does not declare (declared: {})",
                    idps.join(", ")
                )
            });
        }
        (Source::Idp(name.to_owned()), r, true)
    } else {
        (Source::App, v, false)
    };
    let (is_user, id) = if let Some(id) = rest.strip_prefix("user:") {
        (true, id)
    } else if let Some(g) = rest.strip_prefix("group:") {
        (false, g)
    } else {
        return Err(format!("{v:?} is not a subject: {FORMS}"));
    };
    if id.is_empty() || id.len() > MAX_SUBJECT_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "{v:?}: a user id or group name is 1-{MAX_SUBJECT_LEN} bytes without control characters"
        ));
    }
    if !explicit {
        let kind = if is_user { "user" } else { "group" };
        if ["app:", "idp:", "*:", "user:", "group:"]
            .iter()
            .any(|p| id.starts_with(p))
        {
            return Err(format!(
                "{v:?} is ambiguous: it reads like a source-qualified subject but names an app-vouched {kind} whose id is {id:?}; write \"app:{kind}:{id}\" if that is meant, or the provider's form \"idp:<provider>:{kind}:<id>\""
            ));
        }
        if !idps.is_empty() {
            return Err(format!(
                "{v:?} is ambiguous in a policy with identity providers ({}): say whose {kind} it is: \"app:{kind}:{id}\" (vouched by your app's API keys), \"idp:<provider>:{kind}:{id}\" (one provider), or \"*:{kind}:{id}\" (any source)",
                idps.join(", ")
            ));
        }
    }
    Ok(if is_user {
        Subject::User(source, id.to_owned())
    } else {
        Subject::Group(source, id.to_owned())
    })
}

/// Which sessions a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMatch {
    Any,
    Id(String),
    Label {
        key: String,
        value: Glob,
        pattern: String,
    },
    Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    Deny,
    Downgrade,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub priority: i64,
    pub effect: Effect,
    pub subjects: Vec<Subject>,
    pub sessions: Vec<SessionMatch>,
    pub roles: Vec<Role>,
    pub default_role: Option<Role>,
    pub default_ttl: Option<i64>,
    pub max_ttl: Option<i64>,
    pub on_role_excess: Excess,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Used when neither the request nor the rule names a role (default publisher).
    pub role: Role,
    /// Used when the request names no expiry and the rule no default_ttl.
    pub ttl: i64,
}

/// A validated policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDoc {
    pub tenant: String,
    pub description: Option<String>,
    pub credentials: Vec<CredentialSpec>,
    pub defaults: Defaults,
    /// As written (the compiled policy sorts them by priority).
    pub rules: Vec<Rule>,
    pub identity_providers: Vec<IdpSpec>,
    pub cors_allowed_origins: Vec<String>,
    pub rate_limits: Option<Rates>,
}

impl PolicyDoc {
    /// Every secret reference of the file with the field that names it
    /// (`credentials[0].api_secret`, `identity_providers[1].public_keys[0]`).
    pub fn secret_refs(&self) -> Vec<(String, SecretRef)> {
        let mut out = Vec::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let key = match &c.provider {
                Provider::OpenTok { .. } => "api_secret",
                Provider::Vonage { .. } => "private_key",
            };
            out.push((format!("credentials[{i}].{key}"), c.secret().clone()));
        }
        for (i, p) in self.identity_providers.iter().enumerate() {
            match &p.keys {
                IdpKeys::Secret(r) => {
                    out.push((format!("identity_providers[{i}].secret"), r.clone()))
                }
                IdpKeys::PublicKeys(list) => {
                    for (j, r) in list.iter().enumerate() {
                        out.push((
                            format!("identity_providers[{i}].public_keys[{j}]"),
                            r.clone(),
                        ));
                    }
                }
                IdpKeys::JwksUrl(_) => {}
            }
        }
        out
    }
}

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tenant: S<String>,
    description: Option<String>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    defaults: Option<RawDefaults>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    identity_providers: Vec<RawIdp>,
    cors: Option<RawCors>,
    rate_limits: Option<RawRates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: S<String>,
    provider: S<String>,
    api_key: Option<S<String>>,
    api_secret: Option<S<String>>,
    token_format: Option<S<String>>,
    application_id: Option<S<String>>,
    private_key: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    role: Option<S<String>>,
    ttl: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: S<String>,
    priority: S<i64>,
    effect: Option<S<String>>,
    subjects: S<Vec<S<String>>>,
    sessions: S<Vec<S<String>>>,
    roles: Option<S<Vec<S<String>>>>,
    default_role: Option<S<String>>,
    default_ttl: Option<S<RawDuration>>,
    max_ttl: Option<S<RawDuration>>,
    on_role_excess: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdp {
    name: S<String>,
    issuer: S<String>,
    audiences: S<Vec<S<String>>>,
    algorithms: S<Vec<S<String>>>,
    secret: Option<S<String>>,
    public_keys: Option<S<Vec<S<String>>>>,
    jwks_url: Option<S<String>>,
    user_id_claim: Option<String>,
    name_claim: Option<String>,
    groups_claim: Option<String>,
    leeway: Option<S<RawDuration>>,
    jwks_min_refresh: Option<S<RawDuration>>,
    jwks_max_age: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: S<Vec<S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRates {
    end_user: Option<S<String>>,
    end_user_ip: Option<S<String>>,
    api_key: Option<S<String>>,
}

/// Most errors one policy reports: the first ones by position, then one line
/// saying how many more there were. However many errors a file holds (a
/// 256 KiB file can hold tens of thousands), the list, the 400 answer and the
/// work of locating each error stay bounded.
pub const MAX_REPORTED_ERRORS: usize = 50;

struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    /// Errors as found, not yet located: lines and columns are counted only
    /// for the `MAX_REPORTED_ERRORS` reported.
    found: Vec<Pending>,
    /// The tenant whose namespace secret references must stay in, when checked.
    confine_to: Option<String>,
}

struct Pending {
    offset: usize,
    field: String,
    message: String,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        self.found.push(Pending {
            offset: span.start,
            field: field.into(),
            message: message.into(),
        });
    }

    fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The first errors in file order (a stable sort keeps the order of
    /// finding within a position), located, then the count of the rest.
    fn into_list(mut self) -> Vec<PolicyError> {
        self.found.sort_by_key(|e| e.offset);
        let more = self.found.len().saturating_sub(MAX_REPORTED_ERRORS);
        self.found.truncate(MAX_REPORTED_ERRORS);
        let mut list: Vec<PolicyError> = self
            .found
            .into_iter()
            .map(|e| {
                let (line, column) = line_col(self.text, e.offset);
                PolicyError {
                    file: self.file.to_owned(),
                    line,
                    column,
                    field: e.field,
                    message: e.message,
                }
            })
            .collect();
        cap_errors_with(&mut list, more);
        list
    }
}

/// Caps a list of policy errors at `MAX_REPORTED_ERRORS` (for lists built
/// elsewhere, e.g. secret reference checks): the first ones, then one error
/// saying how many more there were.
pub fn cap_errors(mut list: Vec<PolicyError>) -> Vec<PolicyError> {
    let more = list.len().saturating_sub(MAX_REPORTED_ERRORS);
    list.truncate(MAX_REPORTED_ERRORS);
    cap_errors_with(&mut list, more);
    list
}

fn cap_errors_with(list: &mut Vec<PolicyError>, more: usize) {
    if more == 0 {
        return;
    }
    let (file, line, column) = list
        .last()
        .map(|e| (e.file.clone(), e.line, e.column))
        .unwrap_or_default();
    list.push(PolicyError {
        file,
        line,
        column,
        field: "(file)".into(),
        message: format!(
            "{more} more error(s) not shown: only the first {MAX_REPORTED_ERRORS} are reported"
        ),
    });
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Turns a TOML/serde error into a located `PolicyError`, naming the key on
/// the offending line when serde's message does not.
pub fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> PolicyError {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().to_owned();
    let (mut line, mut column) = line_col(text, span.start);
    // serde reports an unknown key at its table; point at the key itself.
    if let Some(key) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let mut offset = span.start.min(text.len());
        for l in text[offset..].split_inclusive('\n') {
            if l.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
                (line, column) = line_col(text, offset + (l.len() - l.trim_start().len()));
                break;
            }
            offset += l.len();
        }
    }
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|m| msg.find(m).map(|i| &msg[i + m.len()..]))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .or_else(|| {
            text.lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().to_owned())
                .filter(|k| !k.is_empty())
        })
        .unwrap_or_else(|| "(file)".into());
    PolicyError {
        file: file.to_owned(),
        line,
        column,
        field,
        message: msg,
    }
}

/// A tenant slug: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

pub fn valid_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Parses and validates a policy file; every error, or the document. Secret
/// references must stay inside the tenant's namespace (`SecretRef::check_namespace`).
pub fn parse(file: &str, text: &str) -> Result<PolicyDoc, Vec<PolicyError>> {
    parse_with(file, text, true)
}

/// Parses a version already stored, without the namespace check: a reference
/// stored before the rule existed must make only its own credential unusable
/// (the resolver enforces the namespace on every load), not the whole policy.
pub fn parse_stored(file: &str, text: &str) -> Result<PolicyDoc, Vec<PolicyError>> {
    parse_with(file, text, false)
}

/// Largest policy file accepted (bytes and lines): far above any real policy
/// (hundreds of rules), low enough that parsing, diffing and hashing one stay
/// well under a second.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
pub const MAX_POLICY_LINES: usize = 10_000;

/// Most `[[identity_providers]]` in one policy. Each is a JWKS fetcher that
/// any anonymous client can wake, and a tenant needs one per login system it
/// trusts (a few: staff, customers, a partner); 16 leaves room and keeps the
/// fetchers one tenant can own small.
pub const MAX_IDENTITY_PROVIDERS: usize = 16;

/// Label matchers with `*` or `?` a policy may hold: a decision may try each
/// against a label value (each costs one step per character of the value).
pub const MAX_LABEL_GLOBS: usize = 64;
/// Most `audiences` per provider: every login token's `aud` values are
/// compared with each. An app needs one per client it registered (web,
/// mobile, a few environments); 16 is plenty.
pub const MAX_IDP_AUDIENCES: usize = 16;
/// Most `public_keys` per provider. PEM keys carry no `kid`, so a login token
/// (a forged one too) is checked against every key of its algorithm family:
/// each is a full RSA/EC/Ed signature check on the request's worker. A key
/// rotation needs two or three at once; 8 keeps the worst case a few
/// milliseconds.
pub const MAX_IDP_PUBLIC_KEYS: usize = 8;

fn parse_with(file: &str, text: &str, confine: bool) -> Result<PolicyDoc, Vec<PolicyError>> {
    // New versions are capped; stored ones passed the cap when applied.
    if confine {
        check_size(file, text)?;
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![toml_error(file, text, &e)])?;
    let tenant = raw.tenant.get_ref().clone();
    let mut errs = Errors {
        file,
        text,
        found: Vec::new(),
        confine_to: (confine && valid_slug(&tenant)).then(|| tenant.clone()),
    };

    if !valid_slug(&tenant) {
        errs.at(
            raw.tenant.span(),
            "tenant",
            "a tenant slug is 1-63 of a-z, 0-9 and '-', starting with a letter or digit",
        );
    }

    let credentials = credentials(&mut errs, &raw.credentials);
    let defaults = defaults(&mut errs, raw.defaults.as_ref());
    // Subjects name providers, so their names are known before the rules.
    let idp_names: Vec<String> = raw
        .identity_providers
        .iter()
        .map(|p| p.name.get_ref().clone())
        .collect();
    let rules = rules(&mut errs, &raw.rules, &idp_names);
    let identity_providers = idps(&mut errs, &raw.identity_providers);
    let cors_allowed_origins = cors(&mut errs, raw.cors.as_ref());
    let rate_limits = raw.rate_limits.as_ref().map(|r| rate_limits(&mut errs, r));

    if errs.is_empty() {
        Ok(PolicyDoc {
            tenant,
            description: raw.description,
            credentials,
            defaults,
            rules,
            identity_providers,
            cors_allowed_origins,
            rate_limits,
        })
    } else {
        Err(errs.into_list())
    }
}

/// Refuses a new version over `MAX_POLICY_BYTES` or `MAX_POLICY_LINES`.
fn check_size(file: &str, text: &str) -> Result<(), Vec<PolicyError>> {
    let lines = text.lines().count();
    if text.len() > MAX_POLICY_BYTES || lines > MAX_POLICY_LINES {
        return Err(vec![PolicyError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            field: "(file)".into(),
            message: format!(
                "the policy is {} bytes in {lines} lines; the limits are {MAX_POLICY_BYTES} bytes and {MAX_POLICY_LINES} lines",
                text.len()
            ),
        }]);
    }
    Ok(())
}

/// A role named at `field`, or an error there.
fn role_of(errs: &mut Errors, s: &S<String>, field: String) -> Option<Role> {
    match s.get_ref().parse::<Role>() {
        Ok(r) => Some(r),
        Err(_) => {
            errs.at(
                s.span(),
                field,
                format!(
                    "{:?} is not a role: use subscriber, publisher, publisheronly or moderator",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

/// A token lifetime (positive, at most the service's 30 days) at `field`, in
/// seconds, or an error there.
fn ttl_of(errs: &mut Errors, s: &S<RawDuration>, field: String) -> Option<i64> {
    match duration::parse(s.get_ref()) {
        Ok(n) if n <= 0 => {
            errs.at(s.span(), field, "a duration must be positive");
            None
        }
        Ok(n) if n > MAX_TTL => {
            errs.at(
                s.span(),
                field,
                format!(
                    "{} is above the service's 30-day limit; use at most \"30d\"",
                    duration::human(n)
                ),
            );
            None
        }
        Ok(n) => Some(n),
        Err(m) => {
            errs.at(s.span(), field, m);
            None
        }
    }
}

/// The `[defaults]` section (publisher and one hour when absent).
fn defaults(errs: &mut Errors, raw: Option<&RawDefaults>) -> Defaults {
    let mut defaults = Defaults {
        role: Role::Publisher,
        ttl: DEFAULT_TTL,
    };
    if let Some(d) = raw {
        if let Some(r) = &d.role
            && let Some(role) = role_of(errs, r, "defaults.role".into())
        {
            defaults.role = role;
        }
        if let Some(t) = &d.ttl
            && let Some(n) = ttl_of(errs, t, "defaults.ttl".into())
        {
            defaults.ttl = n;
        }
    }
    defaults
}

/// The `[[rules]]` sections: each rule, with ids and priorities unique
/// across them.
fn rules(errs: &mut Errors, raw: &[RawRule], idp_names: &[String]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let (mut globs, mut globs_reported) = (0, false);
    let mut ids = HashSet::new();
    let mut priorities = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let f = |k: &str| format!("rules[{i}].{k}");
        if !valid_id(r.id.get_ref()) {
            errs.at(
                r.id.span(),
                f("id"),
                "a rule id is 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            );
        } else if !ids.insert(r.id.get_ref().clone()) {
            errs.at(
                r.id.span(),
                f("id"),
                format!(
                    "rule id {:?} is used twice; ids must be unique (decisions name them)",
                    r.id.get_ref()
                ),
            );
        }
        if !priorities.insert(*r.priority.get_ref()) {
            errs.at(r.priority.span(), f("priority"), format!("priority {} is used by another rule; priorities must be unique so the first match is well defined", r.priority.get_ref()));
        }
        let rule = rule(errs, r, &f, idp_names);
        check_rule(errs, r, &rule, &f);
        globs += rule.sessions.iter().filter(|m| is_glob(m)).count();
        if globs > MAX_LABEL_GLOBS && !globs_reported {
            globs_reported = true;
            errs.at(
                r.sessions.span(),
                f("sessions"),
                format!("a policy has at most {MAX_LABEL_GLOBS} label matchers with `*` or `?` (every decision may try each of them)"),
            );
        }
        rules.push(rule);
    }
    rules
}

/// A label matcher with `*` or `?` (a literal one is a string comparison).
fn is_glob(m: &SessionMatch) -> bool {
    matches!(m, SessionMatch::Label { value, .. } if !value.is_literal())
}

/// One rule's fields, each validated on its own (`f` names a field of it).
fn rule(errs: &mut Errors, r: &RawRule, f: &impl Fn(&str) -> String, idp_names: &[String]) -> Rule {
    let effect = match r.effect.as_ref().map(|e| e.get_ref().as_str()) {
        None | Some("allow") => Effect::Allow,
        Some("deny") => Effect::Deny,
        Some(other) => {
            errs.at(
                r.effect.as_ref().map(|e| e.span()).unwrap_or(0..0),
                f("effect"),
                format!("{other:?} is not an effect: use \"allow\" or \"deny\""),
            );
            Effect::Allow
        }
    };
    let subjects = subjects(errs, &r.subjects, f, idp_names);
    let sessions = sessions(errs, &r.sessions, f);
    let mut roles = Vec::new();
    if let Some(list) = &r.roles {
        for s in list.get_ref() {
            if let Some(role) = role_of(errs, s, f("roles")) {
                roles.push(role);
            }
        }
    }
    let default_role = r
        .default_role
        .as_ref()
        .and_then(|s| role_of(errs, s, f("default_role")));
    let default_ttl = r
        .default_ttl
        .as_ref()
        .and_then(|s| ttl_of(errs, s, f("default_ttl")));
    let max_ttl = r
        .max_ttl
        .as_ref()
        .and_then(|s| ttl_of(errs, s, f("max_ttl")));
    let on_role_excess = match r.on_role_excess.as_ref().map(|e| e.get_ref().as_str()) {
        None | Some("deny") => Excess::Deny,
        Some("downgrade") => Excess::Downgrade,
        Some(other) => {
            errs.at(
                r.on_role_excess.as_ref().map(|e| e.span()).unwrap_or(0..0),
                f("on_role_excess"),
                format!("{other:?} is not valid: use \"deny\" or \"downgrade\""),
            );
            Excess::Deny
        }
    };
    Rule {
        id: r.id.get_ref().clone(),
        priority: *r.priority.get_ref(),
        effect,
        subjects,
        sessions,
        roles,
        default_role,
        default_ttl,
        max_ttl,
        on_role_excess,
    }
}

/// A rule's `subjects` (at least one).
fn subjects(
    errs: &mut Errors,
    raw: &S<Vec<S<String>>>,
    f: &impl Fn(&str) -> String,
    idp_names: &[String],
) -> Vec<Subject> {
    let mut subjects = Vec::new();
    if raw.get_ref().is_empty() {
        errs.at(
            raw.span(),
            f("subjects"),
            "a rule needs at least one subject (\"*\", \"user:<id>\", \"group:<name>\", or with identity providers \"app:user:<id>\", \"idp:<provider>:user:<id>\", ...)",
        );
    }
    for s in raw.get_ref() {
        match parse_subject(s.get_ref(), idp_names) {
            Ok(m) => subjects.push(m),
            Err(m) => errs.at(s.span(), f("subjects"), m),
        }
    }
    subjects
}

/// A rule's `sessions` matchers (at least one).
fn sessions(
    errs: &mut Errors,
    raw: &S<Vec<S<String>>>,
    f: &impl Fn(&str) -> String,
) -> Vec<SessionMatch> {
    let mut sessions = Vec::new();
    if raw.get_ref().is_empty() {
        errs.at(raw.span(), f("sessions"), "a rule needs at least one session matcher (\"*\", \"id:<session id>\", \"label:<key>=<glob>\" or \"owner\")");
    }
    for s in raw.get_ref() {
        match session_match(s.get_ref()) {
            Ok(m) => sessions.push(m),
            Err(m) => errs.at(s.span(), f("sessions"), m),
        }
    }
    sessions
}

/// One session matcher: `*`, `owner`, `id:<session id>` or `label:<key>=<glob>`.
fn session_match(v: &str) -> Result<SessionMatch, String> {
    if v == "*" {
        Ok(SessionMatch::Any)
    } else if v == "owner" {
        Ok(SessionMatch::Owner)
    } else if let Some(id) = v.strip_prefix("id:").filter(|x| !x.is_empty()) {
        // Canonical, so every spelling of the session meets this rule.
        crate::domain::SessionId::parse(id)
            .map(|sid| SessionMatch::Id(sid.canonical().to_owned()))
            .map_err(|e| format!("{v:?}: {e}"))
    } else if let Some((k, g)) = v
        .strip_prefix("label:")
        .and_then(|x| x.split_once('='))
        .filter(|(k, _)| !k.is_empty())
    {
        // What no session can be registered with never matches: a typo
        // (`label:locked = true`) would silently disable the rule.
        if !is_label_key(k) {
            return Err(format!(
                "{v:?}: no session can have label key {k:?}: label keys are 1-{MAX_LABEL_KEY} of A-Z a-z 0-9 _ . - /"
            ));
        }
        let value = Glob::new(g).map_err(|e| format!("{v:?}: {e}"))?;
        if value.is_literal() && g.len() > MAX_LABEL_VALUE {
            return Err(format!(
                "{v:?}: no session can have this label value: values are at most {MAX_LABEL_VALUE} bytes"
            ));
        }
        Ok(SessionMatch::Label {
            key: k.to_owned(),
            value,
            pattern: g.to_owned(),
        })
    } else {
        Err(format!(
            "{v:?} is not a session matcher: use \"*\", \"id:<session id>\", \"label:<key>=<glob>\" or \"owner\""
        ))
    }
}

/// What a rule's fields must agree on: its default role among its roles, a
/// default role to downgrade to, its default TTL within its maximum, and
/// nothing granted by a deny rule.
fn check_rule(errs: &mut Errors, r: &RawRule, rule: &Rule, f: &impl Fn(&str) -> String) {
    if let (Some(d), Some(rs)) = (rule.default_role, &r.default_role)
        && rule.effect == Effect::Allow
        && !rule.roles.contains(&d)
    {
        errs.at(
            rs.span(),
            f("default_role"),
            format!("default_role {d} is not in this rule's roles; add it to roles"),
        );
    }
    if rule.on_role_excess == Excess::Downgrade && rule.default_role.is_none() {
        let span = r.on_role_excess.as_ref().map(|e| e.span()).unwrap_or(0..0);
        errs.at(span, f("on_role_excess"), "\"downgrade\" grants the rule's default_role instead, so the rule needs a default_role");
    }
    if let (Some(d), Some(m), Some(s)) = (rule.default_ttl, rule.max_ttl, &r.default_ttl)
        && d > m
    {
        errs.at(
            s.span(),
            f("default_ttl"),
            format!(
                "default_ttl {} is above max_ttl {}",
                duration::human(d),
                duration::human(m)
            ),
        );
    }
    if rule.effect == Effect::Deny
        && (r.roles.is_some()
            || r.default_role.is_some()
            || r.max_ttl.is_some()
            || r.default_ttl.is_some())
    {
        errs.at(
            r.id.span(),
            f("effect"),
            "a deny rule grants nothing: remove roles, default_role, default_ttl and max_ttl",
        );
    }
}

/// The `[cors]` section: origins (`scheme://host[:port]`, no path) or `*`.
fn cors(errs: &mut Errors, raw: Option<&RawCors>) -> Vec<String> {
    let mut cors_allowed_origins = Vec::new();
    if let Some(c) = raw {
        for o in c.allowed_origins.get_ref() {
            let v = o.get_ref();
            let ok = v == "*"
                || ((v.starts_with("https://") || v.starts_with("http://"))
                    && !v.ends_with('/')
                    && !v[v.find("://").unwrap_or(0) + 3..].contains('/'));
            if ok {
                cors_allowed_origins.push(v.clone());
            } else {
                errs.at(o.span(), "cors.allowed_origins", format!("{v:?} is not an origin: use scheme://host[:port] with no path, e.g. \"https://app.example.com\""));
            }
        }
    }
    cors_allowed_origins
}

/// The `[rate_limits]` section: the broker's rates with the ones it overrides.
fn rate_limits(errs: &mut Errors, r: &RawRates) -> Rates {
    let mut rates = Rates::default();
    for (name, v, slot) in [
        ("end_user", &r.end_user, &mut rates.end_user),
        ("end_user_ip", &r.end_user_ip, &mut rates.end_user_ip),
        ("api_key", &r.api_key, &mut rates.api_key),
    ] {
        if let Some(v) = v {
            match Rate::parse(v.get_ref()) {
                Ok(rate) => *slot = rate,
                Err(m) => errs.at(v.span(), format!("rate_limits.{name}"), m),
            }
        }
    }
    rates
}

fn secret_ref(errs: &mut Errors, s: &S<String>, field: String) -> Option<SecretRef> {
    match SecretRef::parse(s.get_ref()) {
        Ok(r) => {
            if let Some(t) = &errs.confine_to
                && let Err(m) = r.check_namespace(t)
            {
                errs.at(s.span(), field, m);
                return None;
            }
            Some(r)
        }
        // Never echo the value: it may be a pasted secret.
        Err(m) => {
            errs.at(s.span(), field, m);
            None
        }
    }
}

/// The `[[credentials]]` sections: each credential, with names and project
/// ids unique across them.
fn credentials(errs: &mut Errors, raw: &[RawCredential]) -> Vec<CredentialSpec> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut owners = HashSet::new();
    for (i, c) in raw.iter().enumerate() {
        let f = |k: &str| format!("credentials[{i}].{k}");
        if !valid_id(c.name.get_ref()) {
            errs.at(
                c.name.span(),
                f("name"),
                "a credential name is 1-64 of a-z, 0-9, '-' and '_'",
            );
        } else if !names.insert(c.name.get_ref().clone()) {
            errs.at(
                c.name.span(),
                f("name"),
                format!("credential name {:?} is used twice", c.name.get_ref()),
            );
        }
        let provider = match c.provider.get_ref().as_str() {
            "opentok" => opentok(errs, c, &f),
            "vonage" => vonage(errs, c, &f),
            other => {
                errs.at(
                    c.provider.span(),
                    f("provider"),
                    format!("{other:?} is not a provider: use \"opentok\" or \"vonage\""),
                );
                None
            }
        };
        if let Some(p) = provider {
            let spec = CredentialSpec {
                name: c.name.get_ref().clone(),
                provider: p,
            };
            if !owners.insert(spec.owner_id().to_owned()) {
                errs.at(c.name.span(), f("name"), format!("another credential already has id {}; a session's owner must pick exactly one credential", spec.owner_id()));
            }
            out.push(spec);
        }
    }
    out
}

/// A field the credential's provider requires is absent.
fn missing(errs: &mut Errors, c: &RawCredential, f: &impl Fn(&str) -> String, k: &str) {
    errs.at(
        c.provider.span(),
        f(k),
        format!("{k} is required for this provider"),
    );
}

/// Fields given that provider `p` does not take.
fn not_for(
    errs: &mut Errors,
    f: &impl Fn(&str) -> String,
    given: &[(&str, &Option<S<String>>)],
    p: &str,
) {
    for &(k, v) in given {
        if let Some(s) = v {
            errs.at(
                s.span(),
                f(k),
                format!("{k} does not apply to provider {p:?}"),
            );
        }
    }
}

/// An OpenTok credential: numeric API key, secret reference, token format.
fn opentok(errs: &mut Errors, c: &RawCredential, f: &impl Fn(&str) -> String) -> Option<Provider> {
    not_for(
        errs,
        f,
        &[
            ("application_id", &c.application_id),
            ("private_key", &c.private_key),
        ],
        "opentok",
    );
    let key = match &c.api_key {
        Some(k) if !k.get_ref().is_empty() && k.get_ref().bytes().all(|b| b.is_ascii_digit()) => {
            Some(k.get_ref().clone())
        }
        Some(k) => {
            errs.at(
                k.span(),
                f("api_key"),
                "an OpenTok API key is the project's numeric id, e.g. \"123456\"",
            );
            None
        }
        None => {
            missing(errs, c, f, "api_key");
            None
        }
    };
    let secret = match &c.api_secret {
        Some(s) => secret_ref(errs, s, f("api_secret")),
        None => {
            missing(errs, c, f, "api_secret");
            None
        }
    };
    let format = match c.token_format.as_ref().map(|t| t.get_ref().as_str()) {
        None | Some("jwt") => OpenTokFormat::Jwt,
        Some("t1") => OpenTokFormat::T1,
        Some(other) => {
            errs.at(
                c.token_format.as_ref().map(|t| t.span()).unwrap_or(0..0),
                f("token_format"),
                format!("{other:?} is not a token format: use \"jwt\" (HS256) or \"t1\" (legacy)"),
            );
            OpenTokFormat::Jwt
        }
    };
    key.zip(secret)
        .map(|(api_key, api_secret)| Provider::OpenTok {
            api_key,
            api_secret,
            token_format: format,
        })
}

/// A Vonage credential: application UUID and private key reference.
fn vonage(errs: &mut Errors, c: &RawCredential, f: &impl Fn(&str) -> String) -> Option<Provider> {
    not_for(
        errs,
        f,
        &[
            ("api_key", &c.api_key),
            ("api_secret", &c.api_secret),
            ("token_format", &c.token_format),
        ],
        "vonage",
    );
    let app = match &c.application_id {
        Some(a) if valid_uuid(a.get_ref()) => Some(a.get_ref().to_ascii_lowercase()),
        Some(a) => {
            errs.at(
                a.span(),
                f("application_id"),
                "a Vonage application id is a UUID, e.g. \"29f760f8-7ce1-46c9-ade3-f2dedee4ed5f\"",
            );
            None
        }
        None => {
            missing(errs, c, f, "application_id");
            None
        }
    };
    let key = match &c.private_key {
        Some(s) => secret_ref(errs, s, f("private_key")),
        None => {
            missing(errs, c, f, "private_key");
            None
        }
    };
    app.zip(key)
        .map(|(application_id, private_key)| Provider::Vonage {
            application_id,
            private_key,
        })
}

/// The `[[identity_providers]]` sections: each provider, with names and
/// issuers unique across them.
fn idps(errs: &mut Errors, raw: &[RawIdp]) -> Vec<IdpSpec> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    if let Some(extra) = raw.get(MAX_IDENTITY_PROVIDERS) {
        errs.at(
            extra.name.span(),
            "identity_providers",
            format!(
                "{} identity providers; a policy has at most {MAX_IDENTITY_PROVIDERS}",
                raw.len()
            ),
        );
    }
    for (i, p) in raw.iter().enumerate() {
        let f = |k: &str| format!("identity_providers[{i}].{k}");
        if !valid_id(p.name.get_ref()) || !names.insert(p.name.get_ref().clone()) {
            errs.at(
                p.name.span(),
                f("name"),
                "a provider name is 1-64 of a-z, 0-9, '-' and '_', unique in the file",
            );
        }
        if p.issuer.get_ref().is_empty() {
            errs.at(
                p.issuer.span(),
                f("issuer"),
                "the issuer is the exact iss claim of the provider's tokens",
            );
        } else if !issuers.insert(p.issuer.get_ref().clone()) {
            // The issuer picks the provider, and the provider is the identity's
            // source: two providers with one issuer would make it ambiguous.
            errs.at(
                p.issuer.span(),
                f("issuer"),
                "another identity provider has this issuer; the issuer decides whose user a token names, so it must be unique",
            );
        }
        idp_audiences(errs, p, &f);
        let hmac = idp_algorithms(errs, p, &f);
        let keys = idp_keys(errs, p, &f, hmac);
        let (leeway, jwks_min_refresh, jwks_max_age) = idp_durations(errs, p, &f);
        if let Some(keys) = keys {
            out.push(IdpSpec {
                name: p.name.get_ref().clone(),
                issuer: p.issuer.get_ref().clone(),
                audiences: p
                    .audiences
                    .get_ref()
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
                algorithms: p
                    .algorithms
                    .get_ref()
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
                keys,
                user_id_claim: p.user_id_claim.clone().unwrap_or_else(|| "sub".into()),
                name_claim: p.name_claim.clone(),
                groups_claim: p.groups_claim.clone(),
                leeway,
                jwks_min_refresh,
                jwks_max_age,
            });
        }
    }
    out
}

/// A provider's `audiences`: at least one, at most `MAX_IDP_AUDIENCES`, none
/// empty.
fn idp_audiences(errs: &mut Errors, p: &RawIdp, f: &impl Fn(&str) -> String) {
    let n = p.audiences.get_ref().len();
    if n == 0 {
        errs.at(
            p.audiences.span(),
            f("audiences"),
            "list at least one accepted aud value",
        );
    } else if n > MAX_IDP_AUDIENCES {
        errs.at(
            p.audiences.span(),
            f("audiences"),
            format!("{n} audiences; a provider accepts at most {MAX_IDP_AUDIENCES}"),
        );
    }
    for a in p.audiences.get_ref() {
        if a.get_ref().is_empty() {
            errs.at(
                a.span(),
                f("audiences"),
                "an audience is the non-empty aud value the provider puts in its tokens",
            );
        }
    }
}

/// A provider's pinned `algorithms` (at least one, HMAC not mixed with
/// public-key ones) and its one key source; whether they are HMAC.
fn idp_algorithms(errs: &mut Errors, p: &RawIdp, f: &impl Fn(&str) -> String) -> bool {
    let mut families = HashSet::new();
    for a in p.algorithms.get_ref() {
        match a.get_ref().parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) => {
                families.insert(format!("{:?}", alg.family()));
            }
            Err(_) => errs.at(
                a.span(),
                f("algorithms"),
                format!(
                    "{:?} is not a JWT algorithm: e.g. RS256, ES256, EdDSA, HS256",
                    a.get_ref()
                ),
            ),
        }
    }
    if p.algorithms.get_ref().is_empty() {
        errs.at(
            p.algorithms.span(),
            f("algorithms"),
            "pin at least one algorithm",
        );
    }
    let sources = [
        p.secret.is_some(),
        p.public_keys.is_some(),
        p.jwks_url.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        errs.at(
            p.name.span(),
            f("keys"),
            "give exactly one key source: secret, public_keys or jwks_url",
        );
    }
    let hmac = families.contains("Hmac");
    if hmac && families.len() > 1 {
        errs.at(
            p.algorithms.span(),
            f("algorithms"),
            "do not mix HMAC (HS*) with public-key algorithms: that invites algorithm confusion",
        );
    }
    hmac
}

/// A provider's keys: a shared secret (HMAC only), public keys or a JWKS URL
/// (public-key algorithms only).
fn idp_keys(
    errs: &mut Errors,
    p: &RawIdp,
    f: &impl Fn(&str) -> String,
    hmac: bool,
) -> Option<IdpKeys> {
    if let Some(s) = &p.secret {
        if !hmac {
            errs.at(
                s.span(),
                f("secret"),
                "a shared secret goes with HS256/HS384/HS512 algorithms only",
            );
        }
        secret_ref(errs, s, f("secret")).map(IdpKeys::Secret)
    } else if let Some(list) = &p.public_keys {
        if hmac {
            errs.at(
                list.span(),
                f("public_keys"),
                "public keys go with RS*/PS*/ES*/EdDSA algorithms, never HS*",
            );
        }
        let n = list.get_ref().len();
        if n > MAX_IDP_PUBLIC_KEYS {
            // Each key is one more signature check for every login token.
            errs.at(
                list.span(),
                f("public_keys"),
                format!(
                    "{n} public keys; a provider has at most {MAX_IDP_PUBLIC_KEYS} (each is checked against every login token)"
                ),
            );
        }
        let refs: Vec<SecretRef> = list
            .get_ref()
            .iter()
            .enumerate()
            .filter_map(|(j, r)| secret_ref(errs, r, f(&format!("public_keys[{j}]"))))
            .collect();
        let mut seen = HashSet::new();
        if let Some(twin) = refs.iter().find(|r| !seen.insert(same_secret(r))) {
            // A key listed twice is checked twice: work for no trust.
            errs.at(
                list.span(),
                f("public_keys"),
                format!("{twin} is listed more than once; list each key once"),
            );
        }
        Some(IdpKeys::PublicKeys(refs))
    } else if let Some(u) = &p.jwks_url {
        if hmac {
            errs.at(
                u.span(),
                f("jwks_url"),
                "a JWKS goes with public-key algorithms, never HS*",
            );
        }
        if let Err(m) = check_jwks_url(u.get_ref()) {
            errs.at(u.span(), f("jwks_url"), m);
        }
        Some(IdpKeys::JwksUrl(u.get_ref().clone()))
    } else {
        None
    }
}

/// What a reference names, for spotting one listed twice: `file:a.pem`,
/// `file:./a.pem` and `file:.//a.pem` are one file.
fn same_secret(r: &SecretRef) -> String {
    match r {
        SecretRef::Env(name) => format!("env:{name}"),
        SecretRef::File(path) => {
            let parts: Vec<_> = path
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            format!("file:{}", parts.join("/"))
        }
    }
}

/// A duration in whole seconds within `range` (`(min, max, "how to say it")`),
/// or `default` when absent (or wrong, with an error).
fn secs(
    errs: &mut Errors,
    v: &Option<S<RawDuration>>,
    field: String,
    default: u64,
    range: (i64, i64, &str),
) -> u64 {
    match v {
        None => default,
        Some(s) => match duration::parse(s.get_ref()) {
            Ok(n) if (range.0..=range.1).contains(&n) => n as u64,
            Ok(_) => {
                errs.at(s.span(), field, format!("use {}", range.2));
                default
            }
            Err(m) => {
                errs.at(s.span(), field, m);
                default
            }
        },
    }
}

/// A provider's `leeway`, `jwks_min_refresh` and `jwks_max_age` (the JWKS
/// ones only with `jwks_url`, the age at least the refresh), in seconds.
fn idp_durations(errs: &mut Errors, p: &RawIdp, f: &impl Fn(&str) -> String) -> (u64, u64, u64) {
    let leeway = secs(errs, &p.leeway, f("leeway"), 60, (0, 3600, "0 to 1h"));
    // A floor, so unknown kids cannot make the broker fetch in a loop.
    let jwks_min_refresh = secs(
        errs,
        &p.jwks_min_refresh,
        f("jwks_min_refresh"),
        10,
        (1, 3600, "1s to 1h"),
    );
    let jwks_max_age = secs(
        errs,
        &p.jwks_max_age,
        f("jwks_max_age"),
        3600,
        (1, 86_400, "1s to 1d"),
    );
    for (k, v) in [
        ("jwks_min_refresh", &p.jwks_min_refresh),
        ("jwks_max_age", &p.jwks_max_age),
    ] {
        if let Some(v) = v
            && p.jwks_url.is_none()
        {
            errs.at(v.span(), f(k), format!("{k} applies only with jwks_url"));
        }
    }
    if let Some(v) = &p.jwks_max_age
        && jwks_max_age < jwks_min_refresh
    {
        errs.at(
            v.span(),
            f("jwks_max_age"),
            format!("jwks_max_age must be at least jwks_min_refresh ({jwks_min_refresh}s)"),
        );
    }
    (leeway, jwks_min_refresh, jwks_max_age)
}
