//! A method + path route table with `{param}` segments. Built once at start-up; matching
//! allocates nothing. Distinguishes an unknown path (404) from a known path with another method
//! (405, with the `Allow` value precomputed).

use crate::http::Method;

/// Most path parameters in one pattern.
pub const PARAMS_MAX: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Segment {
    Literal(&'static str),
    Param,
}

#[derive(Debug)]
struct Entry<T> {
    segments: Vec<Segment>,
    literal: Option<&'static str>,
    methods: Vec<(Method, T)>,
    allow: String,
}

/// Path parameters captured by a match, in pattern order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Params<'p> {
    values: [&'p str; PARAMS_MAX],
    count: usize,
}

impl<'p> Params<'p> {
    /// The `index`-th parameter.
    pub fn get(&self, index: usize) -> Option<&'p str> {
        self.values[..self.count].get(index).copied()
    }
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match<'p, 'r, T> {
    /// A route for this method and path.
    Found(T, Params<'p>),
    /// The path exists with other methods; the `Allow` header value.
    MethodNotAllowed(&'r str),
    /// No such path.
    NotFound,
}

/// The route table.
#[derive(Debug)]
pub struct Router<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { entries: Vec::new() }
    }
}

impl<T: Copy> Router<T> {
    /// Adds `method pattern`; patterns are `/`-separated literals and `{name}` parameters.
    /// Panics on a malformed or duplicate route: the table is code, not input.
    pub fn add(&mut self, method: Method, pattern: &'static str, route: T) -> &mut Self {
        assert!(pattern.starts_with('/'), "route {pattern} must start with /");
        let segments: Vec<Segment> = pattern[1..]
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(segment)
                }
            })
            .collect();
        let params = segments.iter().filter(|s| matches!(s, Segment::Param)).count();
        assert!(params <= PARAMS_MAX, "route {pattern} has too many parameters");
        let literal = (params == 0).then_some(pattern);
        let index = match self
            .entries
            .iter()
            .position(|entry| same_shape(&entry.segments, &segments))
        {
            Some(index) => index,
            None => {
                self.entries.push(Entry {
                    segments,
                    literal,
                    methods: Vec::new(),
                    allow: String::new(),
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        assert!(
            entry.methods.iter().all(|(known, _)| *known != method),
            "duplicate route {method:?} {pattern}"
        );
        entry.methods.push((method, route));
        let mut allow: Vec<&str> = entry.methods.iter().map(|(m, _)| m.as_str()).collect();
        if allow.contains(&"GET") {
            allow.push("HEAD");
        }
        entry.allow = allow.join(", ");
        self
    }

    /// Finds the route for `method` and `path`. HEAD is served by the GET route.
    pub fn find<'p>(&self, method: Method, path: &'p str) -> Match<'p, '_, T> {
        for entry in &self.entries {
            let params = match entry.literal {
                Some(literal) if literal == path => Params::default(),
                Some(_) => continue,
                None => match match_segments(&entry.segments, path) {
                    Some(params) => params,
                    None => continue,
                },
            };
            let wanted = if method == Method::Head {
                Method::Get
            } else {
                method
            };
            return match entry.methods.iter().find(|(known, _)| *known == wanted) {
                Some((_, route)) => Match::Found(*route, params),
                None => Match::MethodNotAllowed(&entry.allow),
            };
        }
        Match::NotFound
    }
}

fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param, Segment::Param) => true,
            _ => false,
        })
}

fn match_segments<'p>(segments: &[Segment], path: &'p str) -> Option<Params<'p>> {
    let rest = path.strip_prefix('/')?;
    let mut params = Params::default();
    let mut parts = rest.split('/');
    for segment in segments {
        let part = parts.next()?;
        match segment {
            Segment::Literal(literal) => {
                if *literal != part {
                    return None;
                }
            }
            Segment::Param => {
                if part.is_empty() {
                    return None;
                }
                params.values[params.count] = part;
                params.count += 1;
            }
        }
    }
    parts.next().is_none().then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<u8> {
        let mut router = Router::default();
        router
            .add(Method::Get, "/v1/payments", 1)
            .add(Method::Post, "/v1/payments", 2)
            .add(Method::Get, "/v1/payments/{id}", 3)
            .add(Method::Post, "/v1/payments/{id}/refunds", 4)
            .add(Method::Delete, "/v1/sessions/current", 5);
        router
    }

    #[test]
    fn matches_literals_and_params() {
        let router = router();
        assert!(matches!(
            router.find(Method::Post, "/v1/payments"),
            Match::Found(2, _)
        ));
        match router.find(Method::Get, "/v1/payments/pay_1") {
            Match::Found(3, params) => assert_eq!(params.get(0), Some("pay_1")),
            other => panic!("{other:?}"),
        }
        match router.find(Method::Post, "/v1/payments/pay_2/refunds") {
            Match::Found(4, params) => {
                assert_eq!(params.get(0), Some("pay_2"));
                assert_eq!(params.get(1), None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            router.find(Method::Head, "/v1/payments"),
            Match::Found(1, _)
        ));
    }

    #[test]
    fn not_found_and_not_allowed() {
        let router = router();
        assert!(matches!(router.find(Method::Get, "/v1/nothing"), Match::NotFound));
        assert!(matches!(
            router.find(Method::Get, "/v1/payments/"),
            Match::NotFound
        ));
        assert!(matches!(
            router.find(Method::Get, "/v1/payments/a/b"),
            Match::NotFound
        ));
        match router.find(Method::Delete, "/v1/payments") {
            Match::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST, HEAD"),
            other => panic!("{other:?}"),
        }
        match router.find(Method::Get, "/v1/sessions/current") {
            Match::MethodNotAllowed(allow) => assert_eq!(allow, "DELETE"),
            other => panic!("{other:?}"),
        }
    }
}
