//! One endpoint: a region's base URLs for a plan, and the key that goes with them; how a
//! request's path is joined to them.

use std::fmt;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use super::key::ApiKey;
use crate::api::{Api, Plan, Region};
use crate::error::{DashScopeError, Delivery, ErrorClass};

/// The API roots DashScope's own paths start with, and the flavour each belongs to.
const KNOWN_ROOTS: [(&str, Api); 3] = [
    ("/compatible-mode/v1", Api::OpenAiCompatible),
    ("/api/v1", Api::Native),
    ("/apps/anthropic", Api::Anthropic),
];

/// Where one API flavour is served on an endpoint.
#[derive(Clone)]
struct Root {
    scheme: Scheme,
    authority: Authority,
    /// Empty, or `/…` without a trailing `/`.
    path: String,
}

impl Root {
    /// The URI of `path` here.
    fn join(&self, path: PathAndQuery) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    }
}

/// An endpoint, ready to serve: its roots per API flavour, its credential headers, and what
/// is wrong with it (found at construction).
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) region: Region,
    pub(crate) plan: Plan,
    key: ApiKey,
    /// Indexed by [`api_index`].
    roots: [Option<Root>; 3],
    /// `Authorization: Bearer <key>` and `x-api-key: <key>`, sensitive.
    headers: Option<(HeaderValue, HeaderValue)>,
    /// A key that cannot be used here, found before anything is sent.
    key_problem: Option<KeyProblem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// Empty, or characters a header cannot carry.
    Unusable,
    /// `sk-sp-…` on a host that is not a Coding Plan host.
    CodingPlanKeyElsewhere,
    /// A key that is not `sk-sp-…` on a Coding Plan host.
    PlainKeyOnCodingPlan,
}

fn api_index(api: Api) -> usize {
    match api {
        Api::OpenAiCompatible => 0,
        Api::Native => 1,
        Api::Anthropic => 2,
    }
}

const APIS: [Api; 3] = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

impl Endpoint {
    pub(crate) fn new(region: Region, plan: Plan, key: ApiKey) -> Self {
        let mut roots: [Option<Root>; 3] = [None, None, None];
        for api in APIS {
            roots[api_index(api)] = region.base_url(plan, api).and_then(|url| {
                let uri = url.parse::<Uri>().ok()?;
                Some(Root {
                    scheme: uri.scheme()?.clone(),
                    authority: uri.authority()?.clone(),
                    path: uri.path().trim_end_matches('/').to_owned(),
                })
            });
        }
        let headers = key.header_values();
        // The plan the host really serves: a custom URL naming a DashScope host says which.
        let checked_plan = match &region {
            Region::Custom(base) => Region::from_host(base.authority().host()).map(|(_, p)| p),
            _ => Some(plan),
        };
        let key_problem = if headers.is_none() {
            Some(KeyProblem::Unusable)
        } else {
            match checked_plan {
                Some(Plan::CodingPlan) if !key.is_coding_plan() => {
                    Some(KeyProblem::PlainKeyOnCodingPlan)
                }
                Some(p) if p != Plan::CodingPlan && key.is_coding_plan() => {
                    Some(KeyProblem::CodingPlanKeyElsewhere)
                }
                _ => None,
            }
        };
        Endpoint {
            region,
            plan,
            key,
            roots,
            headers,
            key_problem,
        }
    }

    /// The base URL of `api` here, for messages.
    pub(crate) fn base_url(&self, api: Api) -> Option<String> {
        self.region.base_url(self.plan, api)
    }

    /// Whether this endpoint serves `api`.
    pub(crate) fn serves(&self, api: Api) -> bool {
        self.roots[api_index(api)].is_some()
    }

    pub(crate) fn key_problem(&self) -> Option<KeyProblem> {
        self.key_problem
    }

    /// The credential headers: `Authorization: Bearer <key>`, and `<key>` for `x-api-key`.
    pub(crate) fn credentials(&self) -> Option<&(HeaderValue, HeaderValue)> {
        self.headers.as_ref()
    }

    /// `original`, the request's URI, on this endpoint: its path relative to the API root
    /// (see [`split_path`]) and its query joined to `api`'s root. When the join gives the
    /// request's own path, that is reused rather than built again.
    pub(crate) fn uri(&self, api: Api, original: Uri) -> Option<Uri> {
        let root = self.roots[api_index(api)].as_ref()?;
        let (_, rest) = split_path(original.path(), api);
        let query = original.query();
        let path = original.path();
        let same = original.path_and_query().is_some()
            && !path.is_empty()
            && path.len() == root.path.len() + rest.len()
            && path.starts_with(&*root.path)
            && path.ends_with(rest);
        if same {
            let path_and_query = original.into_parts().path_and_query?;
            return root.join(path_and_query);
        }
        // The exact length, so that the bytes take the string's buffer as it is (a buffer with
        // room to spare costs `Bytes` another allocation).
        let empty = root.path.is_empty() && rest.is_empty();
        let mut path = String::with_capacity(
            root.path.len() + rest.len() + usize::from(empty) + query.map_or(0, |q| q.len() + 1),
        );
        path.push_str(&root.path);
        path.push_str(rest);
        if empty {
            path.push('/');
        }
        if let Some(query) = query {
            path.push('?');
            path.push_str(query);
        }
        root.join(PathAndQuery::from_maybe_shared(bytes::Bytes::from(path)).ok()?)
    }

    /// The local error for this endpoint's key problem: nothing was sent.
    pub(crate) fn key_error(&self, api: Api) -> Option<DashScopeError> {
        let problem = self.key_problem?;
        let here = self
            .base_url(api)
            .unwrap_or_else(|| self.region.to_string());
        let err = DashScopeError::new(ErrorClass::Authentication).with_delivery(Delivery::NotSent);
        Some(match problem {
            KeyProblem::Unusable => err
                .with_message(format!(
                    "the API key for {here} is empty or holds characters an HTTP header cannot \
                     carry"
                ))
                .with_advice(
                    "copy the key again from the Model Studio console (API keys are printable \
                     ASCII); nothing was sent",
                ),
            KeyProblem::CodingPlanKeyElsewhere => {
                let region = coding_plan_region(&self.region);
                let api = if api == Api::Native {
                    Api::OpenAiCompatible
                } else {
                    api
                };
                let right = region
                    .base_url(Plan::CodingPlan, api)
                    .unwrap_or_else(|| "https://coding-intl.dashscope.aliyuncs.com/v1".into());
                err.with_message(format!(
                    "a Coding Plan key ({}) works only on the Coding Plan hosts, not on {here}",
                    self.key.kind()
                ))
                .with_advice(format!(
                    "use {right} (Plan::CodingPlan) with this key, or a pay-as-you-go key \
                     (sk-…) on {here}; nothing was sent"
                ))
            }
            KeyProblem::PlainKeyOnCodingPlan => {
                let region = coding_plan_region(&self.region);
                let right = region
                    .base_url(Plan::PayAsYouGo, api)
                    .unwrap_or_else(|| here.clone());
                err.with_message(format!(
                    "the Coding Plan host {here} takes only Coding Plan keys (sk-sp-…), and this \
                     key is {}",
                    self.key.kind()
                ))
                .with_advice(format!(
                    "use your Coding Plan key (sk-sp-…) here, or this key on its pay-as-you-go \
                     base URL, e.g. {right} (Plan::PayAsYouGo); nothing was sent"
                ))
            }
        })
    }

    /// The local error for an API this endpoint's plan does not serve: nothing was sent.
    pub(crate) fn unserved_error(&self, api: Api) -> DashScopeError {
        DashScopeError::new(ErrorClass::NotFound)
            .with_delivery(Delivery::NotSent)
            .with_message(unserved_message(&self.region, self.plan, api))
            .with_advice(unserved_advice(self.plan, api))
    }
}

/// The Coding Plan region that matches `region`: China for Beijing, Global for any other.
fn coding_plan_region(region: &Region) -> Region {
    match region {
        Region::Beijing => Region::Beijing,
        Region::Custom(base) => match Region::from_host(base.authority().host()) {
            Some((Region::Beijing, _)) => Region::Beijing,
            _ => Region::Singapore,
        },
        _ => Region::Singapore,
    }
}

pub(crate) fn unserved_message(region: &Region, plan: Plan, api: Api) -> String {
    if api.base_path(plan).is_none() {
        format!("the {} serves no {} API", plan_name(plan), api)
    } else {
        format!("the {} has no host in {region}", plan_name(plan))
    }
}

pub(crate) fn unserved_advice(plan: Plan, api: Api) -> String {
    match (plan, api) {
        (Plan::CodingPlan | Plan::TokenPlan, Api::Native) => format!(
            "use the OpenAI-compatible API (Api::OpenAiCompatible, {}) or the \
             Anthropic-compatible API (Api::Anthropic, /apps/anthropic) on the {}, or a \
             pay-as-you-go key for the native API",
            Api::OpenAiCompatible
                .base_path(plan)
                .unwrap_or("/compatible-mode/v1"),
            plan_name(plan)
        ),
        (Plan::CodingPlan, _) => "the Coding Plan is served in Region::Beijing (China) and \
                                  Region::Singapore (Global)"
            .to_owned(),
        (Plan::TokenPlan, _) => "the Token Plan is served in Region::Beijing and \
                                 Region::Singapore"
            .to_owned(),
        _ => "use one of DashScope's regions or a custom base URL".to_owned(),
    }
}

fn plan_name(plan: Plan) -> &'static str {
    match plan {
        Plan::PayAsYouGo => "pay-as-you-go plan",
        Plan::CodingPlan => "Coding Plan",
        Plan::TokenPlan => "Token Plan",
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("region", &self.region)
            .field("plan", &self.plan)
            .field("key", &self.key)
            .finish()
    }
}

/// The API flavour of a request path and the path relative to its API root.
///
/// A path under one of DashScope's roots (`/compatible-mode/v1`, `/api/v1`,
/// `/apps/anthropic`) is that flavour, the root taken off; a path under `/v1` is the
/// OpenAI-compatible flavour when `default` is (the Coding Plan's root and OpenAI's); any
/// other path is `default`'s, relative as it is. Runs of leading `/` count as one; a root
/// matches only whole segments (`/api/v1beta` is not under `/api/v1`).
pub(crate) fn split_path(path: &str, default: Api) -> (Api, &str) {
    let trimmed = path.trim_start_matches('/');
    let path = if trimmed.len() + 1 < path.len() {
        // `//chat` → `/chat`
        &path[path.len() - trimmed.len() - 1..]
    } else {
        path
    };
    let (api, rest) = KNOWN_ROOTS
        .iter()
        .find_map(|&(root, api)| under_segment(path, root).map(|rest| (api, rest)))
        .or_else(|| {
            (default == Api::OpenAiCompatible)
                .then(|| under_segment(path, "/v1"))
                .flatten()
                .map(|rest| (default, rest))
        })
        .unwrap_or((default, path));
    // The `/v1/v1` trap: a base URL that already ended in `/v1` joined to a path that starts
    // with it. OpenAI-compatible paths under the root never start with `/v1`; Anthropic's
    // start with exactly one.
    let rest = match api {
        Api::OpenAiCompatible => under_segment(rest, "/v1").unwrap_or(rest),
        Api::Anthropic if under_segment(rest, "/v1/v1").is_some() => &rest[3..],
        _ => rest,
    };
    (api, if rest == "/" { "" } else { rest })
}

/// `path` without `root`, when `root` is a whole-segment prefix of it.
fn under_segment<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    path.strip_prefix(root)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_path_is_reused_when_the_join_gives_it_and_built_otherwise() {
        let endpoint = Endpoint::new(Region::Singapore, Plan::PayAsYouGo, ApiKey::new("sk-1"));
        let custom = Endpoint::new(
            Region::custom("https://proxy.example/dashscope/").unwrap(),
            Plan::PayAsYouGo,
            ApiKey::new("sk-1"),
        );
        let api = Api::OpenAiCompatible;
        let cases = [
            (
                &endpoint,
                "/compatible-mode/v1/chat/completions?x=1",
                "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions?x=1",
            ),
            (
                &endpoint,
                "/chat/completions",
                "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
            ),
            (
                &endpoint,
                "https://elsewhere.example/compatible-mode/v1/models",
                "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/models",
            ),
            (
                &endpoint,
                "https://elsewhere.example",
                "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            ),
            (
                &custom,
                "/compatible-mode/v1/chat/completions",
                "https://proxy.example/dashscope/compatible-mode/v1/chat/completions",
            ),
            (
                &custom,
                "/",
                "https://proxy.example/dashscope/compatible-mode/v1",
            ),
        ];
        for (endpoint, from, to) in cases {
            let uri = endpoint.uri(api, from.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), to, "{from}");
        }
    }

    #[test]
    fn split() {
        use Api::*;
        let cases = [
            (
                "/compatible-mode/v1/chat/completions",
                Native,
                OpenAiCompatible,
                "/chat/completions",
            ),
            (
                "/v1/chat/completions",
                OpenAiCompatible,
                OpenAiCompatible,
                "/chat/completions",
            ),
            ("/v1/messages", Anthropic, Anthropic, "/v1/messages"),
            (
                "/apps/anthropic/v1/messages",
                OpenAiCompatible,
                Anthropic,
                "/v1/messages",
            ),
            (
                "/api/v1/services/aigc/text-generation/generation",
                OpenAiCompatible,
                Native,
                "/services/aigc/text-generation/generation",
            ),
            ("/api/v1beta/x", Native, Native, "/api/v1beta/x"),
            (
                "//chat/completions",
                OpenAiCompatible,
                OpenAiCompatible,
                "/chat/completions",
            ),
            ("/", OpenAiCompatible, OpenAiCompatible, ""),
            ("", OpenAiCompatible, OpenAiCompatible, ""),
            ("/compatible-mode/v1", Native, OpenAiCompatible, ""),
            (
                "/chat/completions",
                OpenAiCompatible,
                OpenAiCompatible,
                "/chat/completions",
            ),
            ("/models/", OpenAiCompatible, OpenAiCompatible, "/models/"),
            (
                "/compatible-mode/v1/v1/chat/completions",
                OpenAiCompatible,
                OpenAiCompatible,
                "/chat/completions",
            ),
            (
                "/v1/v1/chat/completions",
                OpenAiCompatible,
                OpenAiCompatible,
                "/chat/completions",
            ),
            (
                "/apps/anthropic/v1/v1/messages",
                Anthropic,
                Anthropic,
                "/v1/messages",
            ),
            ("/v1/v1/messages", Anthropic, Anthropic, "/v1/messages"),
        ];
        for (path, default, api, rest) in cases {
            assert_eq!(split_path(path, default), (api, rest), "{path}");
        }
    }
}
