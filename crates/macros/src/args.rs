//! Parses and validates `name = literal` macro arguments, with errors pointing at the argument.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, MetaNameValue, Token};

/// One parsed argument.
pub(crate) struct Arg {
    pub(crate) name: String,
    pub(crate) span: Span,
    pub(crate) lit: Lit,
}

/// Parses `a = 1, b = "x"`, rejecting unknown and repeated names.
pub(crate) fn parse(attr: TokenStream, allowed: &[&str]) -> syn::Result<Vec<Arg>> {
    let metas = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut out: Vec<Arg> = Vec::new();
    for m in metas {
        let ident = m
            .path
            .get_ident()
            .ok_or_else(|| syn::Error::new_spanned(&m.path, "expected an argument name"))?;
        let name = ident.to_string();
        if !allowed.contains(&name.as_str()) {
            return Err(syn::Error::new_spanned(
                &m.path,
                format!(
                    "unknown argument `{name}`; expected one of: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(syn::Error::new_spanned(
                &m.path,
                format!("argument `{name}` given twice"),
            ));
        }
        let lit = match m.value {
            Expr::Lit(ExprLit { lit, .. }) => lit,
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    format!("`{name}` takes a literal value"),
                ))
            }
        };
        out.push(Arg {
            name,
            span: ident.span(),
            lit,
        });
    }
    Ok(out)
}

pub(crate) fn find<'a>(args: &'a [Arg], name: &str) -> Option<&'a Arg> {
    args.iter().find(|a| a.name == name)
}

pub(crate) fn string(args: &[Arg], name: &str) -> syn::Result<Option<(String, Span)>> {
    match find(args, name) {
        None => Ok(None),
        Some(a) => match &a.lit {
            Lit::Str(s) => {
                let v = s.value();
                if v.trim().is_empty() {
                    return Err(syn::Error::new(
                        s.span(),
                        format!("`{name}` must not be empty"),
                    ));
                }
                if v.chars().any(char::is_whitespace) {
                    return Err(syn::Error::new(
                        s.span(),
                        format!("`{name}` must not contain whitespace"),
                    ));
                }
                crate::topic::check(name, &v, s.span())?;
                Ok(Some((v, s.span())))
            }
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{name}` takes a string, e.g. {name} = \"user_updates\""),
            )),
        },
    }
}

pub(crate) fn required_string(
    args: &[Arg],
    name: &str,
    call_site: Span,
) -> syn::Result<(String, Span)> {
    string(args, name)?.ok_or_else(|| {
        syn::Error::new(
            call_site,
            format!("missing required argument `{name} = \"...\"`"),
        )
    })
}

pub(crate) fn uint(args: &[Arg], name: &str, min: u64, max: u64) -> syn::Result<Option<u32>> {
    match find(args, name) {
        None => Ok(None),
        Some(a) => match &a.lit {
            Lit::Int(i) => {
                let v: u64 = i.base10_parse().map_err(|_| {
                    syn::Error::new(i.span(), format!("`{name}` must be a whole number"))
                })?;
                if v < min || v > max {
                    return Err(syn::Error::new(
                        i.span(),
                        format!("`{name}` must be between {min} and {max}, got {v}"),
                    ));
                }
                Ok(Some(v as u32))
            }
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{name}` takes a whole number, e.g. {name} = 3"),
            )),
        },
    }
}

/// A duration given as `"5s"` (humantime), or as a number of seconds (`5` or `5.0`). Returns
/// nanoseconds.
pub(crate) fn duration(args: &[Arg], name: &str) -> syn::Result<Option<u64>> {
    let Some(a) = find(args, name) else {
        return Ok(None);
    };
    let (nanos, span) = match &a.lit {
        Lit::Str(s) => {
            let d = crate::settings::duration_text(&s.value())
                .map_err(|e| syn::Error::new(s.span(), format!("`{name}`: {e}")))?;
            (d.as_nanos(), s.span())
        }
        Lit::Int(i) => {
            let secs: u64 = i
                .base10_parse()
                .map_err(|_| syn::Error::new(i.span(), "expected seconds"))?;
            (u128::from(secs) * 1_000_000_000, i.span())
        }
        Lit::Float(f) => {
            let secs: f64 = f
                .base10_parse()
                .map_err(|_| syn::Error::new(f.span(), "expected seconds"))?;
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(syn::Error::new(
                    f.span(),
                    format!("`{name}` must be a non-negative number of seconds"),
                ));
            }
            ((secs * 1e9) as u128, f.span())
        }
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`{name}` takes a duration, e.g. {name} = \"5s\""),
            ))
        }
    };
    if nanos > 24 * 3600 * 1_000_000_000 {
        return Err(syn::Error::new(
            span,
            format!("`{name}` must be at most 24h"),
        ));
    }
    let _ = a.span;
    Ok(Some(nanos as u64))
}
