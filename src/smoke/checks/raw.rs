//! The checks file as serde reads it: the raw shapes (a request as a mapping or as
//! "METHOD /path", a status as a number, a class or a list, one string or many), and their
//! conversion into the checks model with each error's field path. Values are kept as text
//! here and checked in `build`, where an error can say exactly which field holds the bad
//! value.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with a `checks:` list")]
pub(super) struct RawFile {
    pub(super) checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a check like {name: home page, request: GET /, expect: {status: 200}}"
)]
pub(super) struct RawCheck {
    pub(super) name: String,
    #[serde(default)]
    request: Option<RawRequest>,
    #[serde(default)]
    expect: Option<RawExpect>,
    #[serde(default, deserialize_with = "present")]
    cold_start: Option<RawColdStart>,
    #[serde(default, deserialize_with = "present")]
    concurrent: Option<RawConcurrent>,
    #[serde(default, deserialize_with = "present")]
    revision_switch: Option<RawRevisionSwitch>,
}

/// A scenario key written with nothing after it (`coldStart:`) still asks for the scenario;
/// plain `Option` would read it as absent and quietly run a different test.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping like {firstByteBelow: 3s}"
)]
struct RawColdStart {
    first_byte_below: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like {requests: 50}")]
struct RawConcurrent {
    requests: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping like {image: my-app:v2, requestsPerSecond: 20}"
)]
struct RawRevisionSwitch {
    image: Option<String>,
    requests_per_second: Option<i64>,
}

enum RawRequest {
    Line(String),
    Fields(RawRequestFields),
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a request like {method: GET, path: /}"
)]
struct RawRequestFields {
    method: Option<String>,
    path: Option<String>,
    headers: Option<Pairs<String>>,
    body: Option<String>,
    tag: Option<String>,
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = RawRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request like {method: GET, path: /} or \"GET /\"")
            }
            fn visit_str<E: de::Error>(self, line: &str) -> Result<RawRequest, E> {
                Ok(RawRequest::Line(line.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRequest, A::Error> {
                RawRequestFields::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRequest::Fields)
            }
        }
        deserializer.deserialize_any(RequestVisitor)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "expectations like {status: 200, bodyContains: Hello}"
)]
struct RawExpect {
    status: Option<RawStatus>,
    body_contains: Option<OneOrMany>,
    body_matches: Option<OneOrMany>,
    json: Option<Pairs<Value>>,
    headers: Option<Pairs<String>>,
    latency_below: Option<String>,
}

/// `200`, `2xx` or `[200, 204]`, as text to be checked.
enum RawStatus {
    One(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;
        impl<'de> Visitor<'de> for StatusVisitor {
            type Value = RawStatus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code like 200, a class like 2xx or a list like [200, 204]")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::One(text.to_string()))
            }
            fn visit_u64<E: de::Error>(self, code: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::One(code.to_string()))
            }
            fn visit_i64<E: de::Error>(self, code: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::One(code.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawStatus, A::Error> {
                let mut codes = Vec::new();
                while let Some(code) = seq.next_element::<Text>()? {
                    codes.push(code.0);
                }
                Ok(RawStatus::List(codes))
            }
        }
        deserializer.deserialize_any(StatusVisitor)
    }
}

/// A scalar as the text it was written as. YAML reads `200` and `true` as a number and a
/// boolean; where text is wanted, they are the text.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Text)
    }
}

/// A string, or a list of strings: one `bodyContains` or several.
struct OneOrMany {
    items: Vec<String>,
    /// Whether it was written as a list, so an error can name the item.
    list: bool,
}

impl OneOrMany {
    fn paths<'a>(&'a self, at: &'a str) -> impl Iterator<Item = (String, &'a String)> + 'a {
        self.items.iter().enumerate().map(move |(i, item)| {
            let path = if self.list {
                format!("{at}[{i}]")
            } else {
                at.to_string()
            };
            (path, item)
        })
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany {
                    items: vec![text.to_string()],
                    list: false,
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<OneOrMany, E> {
                self.visit_str(&b.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item.0);
                }
                Ok(OneOrMany { items, list: true })
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// A mapping kept in the order it was written, which is the order its checks report in.
/// A key given twice is an error rather than YAML's silent "last one wins".
struct Pairs<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping like {Name: value}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<V>, A::Error> {
                let mut pairs: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if pairs.iter().any(|(seen, _)| *seen == key) {
                        return Err(de::Error::custom(format!("key `{key}` is given twice")));
                    }
                    let value = map.next_value()?;
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

impl RawCheck {
    pub(super) fn build(self, at: &str) -> Result<Check, FieldError> {
        let scenario = self.scenario(at)?;
        let request = match self.request {
            None => RequestSpec::default(),
            Some(request) => request.build(&format!("{at}.request"))?,
        };
        let expect = match self.expect {
            None => Expect::default(),
            Some(expect) => expect.build(&format!("{at}.expect"))?,
        };
        Ok(Check {
            name: self.name,
            scenario,
            request,
            expect,
        })
    }

    fn scenario(&self, at: &str) -> Result<Scenario, FieldError> {
        let given: Vec<&str> = [
            ("coldStart", self.cold_start.is_some()),
            ("concurrent", self.concurrent.is_some()),
            ("revisionSwitch", self.revision_switch.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        if given.len() > 1 {
            return Err(FieldError::new(
                at,
                format!(
                    "a check runs one scenario, found {}; split it into one check each",
                    given.join(" and ")
                ),
            ));
        }
        if let Some(cold) = &self.cold_start {
            let first_byte_below = cold
                .first_byte_below
                .as_deref()
                .map(|text| threshold(&format!("{at}.coldStart.firstByteBelow"), text))
                .transpose()?;
            return Ok(Scenario::ColdStart { first_byte_below });
        }
        if let Some(concurrent) = &self.concurrent {
            let path = format!("{at}.concurrent.requests");
            let Some(requests) = concurrent.requests else {
                return Err(FieldError::new(
                    path,
                    "missing: say how many requests to send at once, like {requests: 50}",
                ));
            };
            let requests = in_range(&path, requests, MAX_CONCURRENT_REQUESTS)?;
            return Ok(Scenario::Concurrent { requests });
        }
        if let Some(switch) = &self.revision_switch {
            let image = switch.image.as_deref().map(str::trim).unwrap_or_default();
            if image.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.revisionSwitch.image"),
                    "missing: name the image of the second revision, like {image: my-app:v2}",
                ));
            }
            let image = image.to_string();
            let requests_per_second = match switch.requests_per_second {
                None => DEFAULT_REQUESTS_PER_SECOND,
                Some(rate) => in_range(
                    &format!("{at}.revisionSwitch.requestsPerSecond"),
                    rate,
                    MAX_REQUESTS_PER_SECOND,
                )?,
            };
            return Ok(Scenario::RevisionSwitch {
                image,
                requests_per_second,
            });
        }
        Ok(Scenario::Request)
    }
}

fn in_range(path: &str, value: i64, max: u32) -> Result<u32, FieldError> {
    u32::try_from(value)
        .ok()
        .filter(|value| (1..=max).contains(value))
        .ok_or_else(|| FieldError::new(path, format!("expected 1 to {max}, found {value}")))
}

/// A time limit: a duration, and not zero, which no request could beat.
fn threshold(path: &str, text: &str) -> Result<Duration, FieldError> {
    match parse_duration(text) {
        Ok(limit) if limit.is_zero() => Err(FieldError::new(
            path,
            format!("{text:?} is a limit no request can meet; give more than 0"),
        )),
        Ok(limit) => Ok(limit),
        Err(message) => Err(FieldError::new(path, message)),
    }
}

impl RawRequest {
    fn build(self, at: &str) -> Result<RequestSpec, FieldError> {
        let fields = match self {
            RawRequest::Line(line) => {
                let (method, path) =
                    parse_request_line(&line).map_err(|message| FieldError::new(at, message))?;
                return Ok(RequestSpec {
                    method,
                    path,
                    ..RequestSpec::default()
                });
            }
            RawRequest::Fields(fields) => fields,
        };
        let mut request = RequestSpec::default();
        if let Some(method) = fields.method {
            request.method = parse_method(method.trim())
                .map_err(|message| FieldError::new(format!("{at}.method"), message))?;
        }
        if let Some(path) = fields.path {
            check_path(&path).map_err(|message| FieldError::new(format!("{at}.path"), message))?;
            request.path = path;
        }
        for (name, value) in fields.headers.map(|h| h.0).unwrap_or_default() {
            let path = format!("{at}.headers.{name}");
            let header = parse_header_name(name.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            let value = parse_header_value(value.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            request.headers.push((header, value));
        }
        request.body = fields.body;
        if let Some(tag) = fields.tag {
            if tag.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{at}.tag"),
                    "must not be empty; leave tag out to use the service's own URL",
                ));
            }
            request.tag = Some(tag.trim().to_string());
        }
        Ok(request)
    }
}

impl RawExpect {
    fn build(self, at: &str) -> Result<Expect, FieldError> {
        let mut expect = Expect::default();
        if let Some(status) = self.status {
            let path = format!("{at}.status");
            expect.status = match status {
                RawStatus::One(text) => {
                    parse_status_field(&text).map_err(|message| FieldError::new(&path, message))?
                }
                RawStatus::List(codes) if codes.is_empty() => {
                    return Err(FieldError::new(
                        path,
                        "the list is empty; give at least one status code",
                    ))
                }
                RawStatus::List(codes) => {
                    let mut exact = Vec::with_capacity(codes.len());
                    for (i, code) in codes.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        if status_class(code.trim()).is_some() {
                            let message = format!(
                                "a list holds status codes only, found {code:?}; \
                                 write status: {code} on its own"
                            );
                            return Err(FieldError::new(path, message));
                        }
                        exact.push(
                            status_code(code.trim())
                                .map_err(|message| FieldError::new(path, message))?,
                        );
                    }
                    StatusExpect::Exact(exact)
                }
            };
        }
        if let Some(texts) = &self.body_contains {
            expect.body_contains = texts.items.clone();
        }
        if let Some(patterns) = &self.body_matches {
            for (path, pattern) in patterns.paths(&format!("{at}.bodyMatches")) {
                let regex = Regex::new(pattern)
                    .map_err(|e| FieldError::new(path, format!("not a valid regex: {e}")))?;
                expect.body_matches.push(regex);
            }
        }
        for (path, value) in self.json.map(|j| j.0).unwrap_or_default() {
            parse_json_path(&path)
                .map_err(|message| FieldError::new(format!("{at}.json[{path:?}]"), message))?;
            expect.json.push((path, value));
        }
        for (name, text) in self.headers.map(|h| h.0).unwrap_or_default() {
            let path = format!("{at}.headers.{name}");
            let header = parse_header_name(name.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            parse_header_value(&text).map_err(|message| FieldError::new(&path, message))?;
            expect.headers.push((header, text));
        }
        if let Some(text) = &self.latency_below {
            expect.latency_below = Some(threshold(&format!("{at}.latencyBelow"), text)?);
        }
        Ok(expect)
    }
}

/// A status as written in a file: the forms of [`StatusExpect::parse`], but a list is
/// written as a YAML list, so a comma here is a typo.
pub(super) fn parse_status_field(text: &str) -> Result<StatusExpect, String> {
    if text.contains(',') {
        return Err(format!(
            "{STATUS_HINT}, found {text:?}; write several as a list like [200, 204]"
        ));
    }
    StatusExpect::parse(text)
}
