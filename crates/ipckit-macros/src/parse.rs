//! A contract trait read into what the generated code needs, with every rule the
//! contract must keep checked here, each failure spanned on the item at fault.

use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, TypeParamBound, parse_quote,
};

/// The names the generated clients take for themselves.
const CLIENT_OWN: &[&str] = &["connect", "new", "proxy", "subscribe"];
/// The names the generated events handle takes for itself.
const EVENTS_OWN: &[&str] = &["new", "publisher"];
/// The types the generated module declares besides the methods' and events'.
const MODULE_OWN: &[&str] = &["Event", "AsyncEvents"];

pub struct Contract {
    /// The trait as the user implements it: no events, no helper attributes.
    pub item: ItemTrait,
    /// `calculator`
    pub module: Ident,
    pub ops: Vec<Op>,
}

pub enum Kind {
    /// A two-way method: what it returns, and its application error, if it can fail.
    TwoWay {
        ok: Box<Type>,
        err: Option<Box<Type>>,
    },
    OneWay,
    Event,
}

pub struct Op {
    pub kind: Kind,
    /// The method's name as written: `add`.
    pub ident: Ident,
    /// Its name on the wire.
    pub name: String,
    /// The struct holding its arguments: `Add`.
    pub args_type: Ident,
    pub args: Vec<Arg>,
    /// Its doc comments.
    pub docs: Vec<Attribute>,
}

pub struct Arg {
    pub ident: Ident,
    pub ty: Type,
    /// An `Option`: absent from older callers' calls.
    pub optional: bool,
}

pub fn contract(mut item: ItemTrait) -> syn::Result<Contract> {
    let mut errors = Errors::default();
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.add(
            item.generics.span(),
            "a contract trait cannot be generic: its methods' types are fixed on the wire; name the types in the methods",
        );
    }
    if let Some(unsafety) = item.unsafety {
        errors.add(unsafety.span, "a contract trait cannot be `unsafe`");
    }
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for trait_item in std::mem::take(&mut item.items) {
        match trait_item {
            TraitItem::Fn(method) => match op(&method) {
                Ok(op) => {
                    if !matches!(op.kind, Kind::Event) {
                        kept.push(TraitItem::Fn(without_helpers(method)));
                    }
                    ops.push(op);
                }
                Err(e) => errors.push(e),
            },
            other => errors.add(
                other.span(),
                "a contract holds methods and events only: move this item out of the trait",
            ),
        }
    }
    check_names(&item.ident, &ops, &mut errors);
    errors.finish()?;

    item.items = kept;
    item.supertraits.push(parse_quote!(::core::marker::Send));
    item.supertraits.push(parse_quote!(::core::marker::Sync));
    item.supertraits
        .push(TypeParamBound::Lifetime(parse_quote!('static)));
    let module = Ident::new(
        &item.ident.unraw().to_string().to_snake_case(),
        item.ident.span(),
    );
    Ok(Contract { item, module, ops })
}

fn op(method: &TraitItemFn) -> syn::Result<Op> {
    let sig = &method.sig;
    let oneway = helper(&method.attrs, "oneway")?;
    let event = helper(&method.attrs, "event")?;
    if let (Some(_), Some(event)) = (oneway, event) {
        return Err(syn::Error::new(
            event,
            "a method is #[oneway] or an #[event], not both: a one-way method is called by clients, an event is pushed by the server",
        ));
    }
    if let Some(asyncness) = sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span,
            "a contract method is a plain `fn`, not `async fn`: handlers are plain functions, and the tokio server runs them on blocking threads; the generated async client's methods are async",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a contract method cannot be generic: its arguments and result have one type on the wire; name the types",
        ));
    }
    if let Some(unsafety) = sig.unsafety {
        return Err(syn::Error::new(
            unsafety.span,
            "a contract method cannot be `unsafe`",
        ));
    }
    if let Some(constness) = sig.constness {
        return Err(syn::Error::new(
            constness.span,
            "a contract method cannot be `const`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "a contract method cannot name an ABI",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(
            variadic.span(),
            "a contract method cannot be variadic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(FnArg::Receiver(receiver)) => {
            return Err(syn::Error::new_spanned(
                receiver,
                "a contract method takes `&self`: calls may run at once on several threads, so state that changes sits behind a lock or in atomics",
            ));
        }
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a contract method takes `&self` first: it is called on the object's instance (write `fn name(&self, ...)`)",
            ));
        }
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            unreachable!("only the first argument can be self")
        };
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "name each argument of a contract method with a plain identifier: the names are the arguments' names on the wire",
                ));
            }
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new_spanned(
                reference,
                "a contract method takes its arguments by value (they are decoded from the call): write an owned type, e.g. `String` for `&str`",
            ));
        }
        args.push(Arg {
            optional: last_segment_is(&typed.ty, "Option", 1),
            ident,
            ty: (*typed.ty).clone(),
        });
    }
    let kind = if oneway.is_some() {
        if let ReturnType::Type(_, ty) = &sig.output {
            if !is_unit(ty) {
                return Err(syn::Error::new_spanned(
                    ty,
                    "a #[oneway] method returns nothing: its caller does not wait, so no result can reach it (WCF requires `void` for IsOneWay); remove the return type, or make the method two-way by removing #[oneway]",
                ));
            }
        }
        Kind::OneWay
    } else if event.is_some() {
        if let ReturnType::Type(..) = &sig.output {
            return Err(syn::Error::new_spanned(
                &sig.output,
                "an #[event] has no return type: the server pushes it and nobody answers; remove `-> ...`",
            ));
        }
        if let Some(body) = &method.default {
            return Err(syn::Error::new(
                body.span(),
                "an #[event] has no body: it is emitted through the generated events handle, not implemented; remove the body",
            ));
        }
        Kind::Event
    } else {
        match &sig.output {
            ReturnType::Default => Kind::TwoWay {
                ok: Box::new(parse_quote!(())),
                err: None,
            },
            ReturnType::Type(_, ty) => two_way(ty)?,
        }
    };
    let name = sig.ident.unraw().to_string();
    Ok(Op {
        kind,
        args_type: Ident::new(&name.to_upper_camel_case(), sig.ident.span()),
        ident: sig.ident.clone(),
        name,
        args,
        docs: method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

/// A two-way method's result: `Result<T, E>` fails with the application's `E`, anything
/// else cannot fail.
fn two_way(ty: &Type) -> syn::Result<Kind> {
    if let Some(args) = generic_args(ty, "Result") {
        return match args.as_slice() {
            [ok, err] => Ok(Kind::TwoWay {
                ok: Box::new((*ok).clone()),
                err: Some(Box::new((*err).clone())),
            }),
            _ => Err(syn::Error::new_spanned(
                ty,
                "write a failing method's result as `Result<T, E>`, `E` being the contract's own serde error type: the caller decodes `E`, so it must be named here",
            )),
        };
    }
    Ok(Kind::TwoWay {
        ok: Box::new(ty.clone()),
        err: None,
    })
}

/// The span of helper attribute `#[name]`, if the method has it.
fn helper(attrs: &[Attribute], name: &str) -> syn::Result<Option<Span>> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        attr.meta.require_path_only()?;
        if found.is_some() {
            return Err(syn::Error::new(attr.span(), format!("#[{name}] twice")));
        }
        found = Some(attr.span());
    }
    Ok(found)
}

/// The trait as written, without the helper attributes nothing else would take away.
pub fn as_written(mut item: ItemTrait) -> ItemTrait {
    for trait_item in &mut item.items {
        if let TraitItem::Fn(method) = trait_item {
            *method = without_helpers(method.clone());
        }
    }
    item
}

fn without_helpers(mut method: TraitItemFn) -> TraitItemFn {
    method
        .attrs
        .retain(|a| !a.path().is_ident("oneway") && !a.path().is_ident("event"));
    method
}

/// The names the generated code declares must not meet: the clients' and the events
/// handle's own methods, and the module's types.
fn check_names(contract: &Ident, ops: &[Op], errors: &mut Errors) {
    let client = format!("{contract}Client");
    let events = format!("{contract}Events");
    for (i, op) in ops.iter().enumerate() {
        let is_event = matches!(op.kind, Kind::Event);
        let taken = if is_event { EVENTS_OWN } else { CLIENT_OWN };
        if taken.contains(&op.name.as_str()) {
            let owner = if is_event { &events } else { &client };
            errors.add(
                op.ident.span(),
                format!(
                    "`{}` is a method of the generated `{owner}` itself: rename this {}",
                    op.name,
                    if is_event { "event" } else { "method" }
                ),
            );
        } else if MODULE_OWN.contains(&op.args_type.to_string().as_str()) {
            errors.add(
                op.ident.span(),
                format!(
                    "`{}` would be named `{}`, as a type the contract's module declares itself: rename it",
                    op.name, op.args_type
                ),
            );
        } else if let Some(earlier) = ops[..i].iter().find(|o| o.args_type == op.args_type) {
            errors.add(
                op.ident.span(),
                format!(
                    "`{}` and `{}` would both have the type `{}`: rename one",
                    earlier.name, op.name, op.args_type
                ),
            );
        }
    }
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty())
}

fn last_segment_is(ty: &Type, name: &str, count: usize) -> bool {
    generic_args(ty, name).is_some_and(|args| args.len() == count)
}

/// The type arguments of `ty` if it is a path ending in `name`.
fn generic_args<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a Type>> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    Some(match &last.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// Every rule broken, reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
