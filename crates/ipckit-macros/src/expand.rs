//! The code a contract becomes. Every path is absolute (`::ipckit::…`, `::core::…`) so
//! that the user's own names never change what it means.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Ident, Type};

use crate::parse::{Arg, Contract, Kind, Op};

pub fn contract(contract: &Contract) -> TokenStream {
    let item = &contract.item;
    let vis = &item.vis;
    let module = &contract.module;
    let name = &item.ident;
    let module_doc = format!(
        "The types of contract `{name}`: one per method, holding its arguments, one per event, `Event` for all its events, and `object()` to serve it."
    );
    let types = contract.ops.iter().map(|op| op_type(name, op));
    let events: Vec<&Op> = contract
        .ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Event))
        .collect();
    let event_enum = event_enum(name, &events);
    let object = object(name, &contract.ops);
    let clients = clients(contract);
    let publisher = publisher(contract, &events);
    quote! {
        #item

        #[doc = #module_doc]
        #[allow(clippy::all, clippy::pedantic, missing_docs)]
        #vis mod #module {
            #[allow(unused_imports)]
            use super::*;

            #(#types)*
            #event_enum
            #object
        }

        #clients
        #publisher
    }
}

fn serde() -> TokenStream {
    quote! {
        #[derive(::core::fmt::Debug, ::ipckit::__private::serde::Serialize, ::ipckit::__private::serde::Deserialize)]
        #[serde(crate = "::ipckit::__private::serde")]
    }
}

/// The struct of a method's arguments or an event's data, and its contract trait.
fn op_type(contract: &Ident, op: &Op) -> TokenStream {
    let Op {
        name,
        args_type,
        args,
        docs,
        ..
    } = op;
    let serde = serde();
    let fields = args.iter().map(
        |Arg {
             ident,
             ty,
             optional,
         }| {
            // Absent from the calls of clients older than the argument.
            let default = optional.then(|| quote!(#[serde(default)]));
            quote!(#default pub #ident: #ty)
        },
    );
    let params = args.iter().map(|Arg { ident, ty, .. }| {
        let arg = ident.to_string();
        let arg = arg.strip_prefix("r#").unwrap_or(&arg);
        let ty = type_text(ty);
        quote!(::ipckit::contract::Param { name: #arg, ty: #ty })
    });
    let params = quote!(const PARAMS: &'static [::ipckit::contract::Param] = &[#(#params),*];);
    let (what, implementation) = match &op.kind {
        Kind::TwoWay { ok, err } => {
            let err = err
                .as_ref()
                .map_or_else(|| quote!(::ipckit::contract::NoError), |e| quote!(#e));
            (
                format!("The arguments of `{contract}::{name}`, a two-way method."),
                quote! {
                    impl ::ipckit::contract::Method for #args_type {
                        const NAME: &'static str = #name;
                        type Output = #ok;
                        type Error = #err;
                        #params
                    }
                },
            )
        }
        Kind::OneWay => (
            format!("The arguments of `{contract}::{name}`, a one-way method."),
            quote! {
                impl ::ipckit::contract::OneWay for #args_type {
                    const NAME: &'static str = #name;
                    #params
                }
            },
        ),
        Kind::Event => (
            format!("The data of event `{name}` of `{contract}`."),
            quote! {
                impl ::ipckit::contract::Event for #args_type {
                    const NAME: &'static str = #name;
                    #params
                }
            },
        ),
    };
    let separator = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
    quote! {
        #[doc = #what]
        #separator
        #(#docs)*
        #serde
        pub struct #args_type {
            #(#fields,)*
        }

        #implementation
    }
}

fn event_enum(contract: &Ident, events: &[&Op]) -> TokenStream {
    let doc =
        format!("An event of `{contract}`, as a client receives it after subscribing to them all.");
    let variants = events.iter().map(|op| {
        let ty = &op.args_type;
        let docs = &op.docs;
        quote!(#(#docs)* #ty(#ty))
    });
    let names = events.iter().map(|op| &op.name);
    let arms = events.iter().map(|op| {
        let (ty, name) = (&op.args_type, &op.name);
        quote!(#name => data.decode().map(|event| ::core::option::Option::Some(Event::#ty(event))))
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::fmt::Debug)]
        pub enum Event {
            #(#variants,)*
        }

        impl ::ipckit::contract::EventSet for Event {
            const NAMES: &'static [&'static str] = &[#(#names),*];

            fn decode(
                name: &str,
                data: ::ipckit::contract::EventData<'_>,
            ) -> ::core::result::Result<::core::option::Option<Self>, ::ipckit::Error> {
                let _ = &data;
                match name {
                    #(#arms,)*
                    _ => ::core::result::Result::Ok(::core::option::Option::None),
                }
            }
        }

        ::ipckit::__if_tokio! {
            #[doc = #doc]
            ///
            /// From the async client's `subscribe`.
            pub struct AsyncEvents<'a> {
                pub(super) proxy: &'a ::ipckit::contract::AsyncProxy,
            }

            impl AsyncEvents<'_> {
                /// The next event. Cancel-safe.
                pub async fn next(&mut self) -> ::ipckit::Result<Event> {
                    self.proxy.recv_event::<Event>().await
                }
            }
        }
    }
}

/// `object::<T>()`, which registers every method and event of the contract.
fn object(contract: &Ident, ops: &[Op]) -> TokenStream {
    let steps = ops.iter().map(|op| {
        let Op {
            ident,
            args_type,
            args,
            ..
        } = op;
        let names: Vec<&Ident> = args.iter().map(|a| &a.ident).collect();
        let call = quote!(<T as super::#contract>::#ident(state, #(args.#names),*));
        match &op.kind {
            Kind::TwoWay { err: None, .. } => quote! {
                .method(|state: &T, args: #args_type| ::core::result::Result::Ok(#call))
            },
            Kind::TwoWay { err: Some(_), .. } => quote! {
                .method(|state: &T, args: #args_type| #call)
            },
            Kind::OneWay => quote! {
                .oneway(|state: &T, args: #args_type| #call)
            },
            Kind::Event => quote!(.event::<#args_type>()),
        }
    });
    let doc = format!(
        "Every method and event of `{contract}`, answered by an implementation `T`, to host in a `Service`."
    );
    quote! {
        #[doc = #doc]
        pub fn object<T: super::#contract>() -> ::ipckit::contract::Object<T> {
            ::ipckit::contract::Object::new()
                #(#steps)*
        }
    }
}

fn clients(contract: &Contract) -> TokenStream {
    let vis = &contract.item.vis;
    let name = &contract.item.ident;
    let module = &contract.module;
    let blocking = format_ident!("{}Client", name);
    let asynchronous = format_ident!("{}AsyncClient", name);
    let calls = |awaited: bool| {
        let wait = awaited.then(|| quote!(.await));
        let asyncness = awaited.then(|| quote!(async));
        contract.ops.iter().filter_map(move |op| {
            let Op {
                ident,
                args_type,
                args,
                docs,
                ..
            } = op;
            let params = args.iter().map(|Arg { ident, ty, .. }| quote!(#ident: #ty));
            let names: Vec<&Ident> = args.iter().map(|a| &a.ident).collect();
            let value = quote!(&#module::#args_type { #(#names),* });
            let docs = docs_or(docs, &format!("Calls `{}`.", op.name));
            Some(match &op.kind {
                Kind::TwoWay { ok, err: None } => quote! {
                    #docs
                    pub #asyncness fn #ident(&self, #(#params),*) -> ::ipckit::Result<#ok> {
                        ::core::result::Result::Ok(self.proxy.call(#value) #wait ?)
                    }
                },
                Kind::TwoWay { ok, err: Some(err) } => quote! {
                    #docs
                    pub #asyncness fn #ident(&self, #(#params),*)
                        -> ::core::result::Result<#ok, ::ipckit::contract::CallError<#err>> {
                        self.proxy.call(#value) #wait
                    }
                },
                Kind::OneWay => quote! {
                    #docs
                    ///
                    /// One-way: returns once the transport has the call, and hears of no
                    /// failure of the server's.
                    pub #asyncness fn #ident(&self, #(#params),*) -> ::ipckit::Result<()> {
                        self.proxy.notify(#value) #wait
                    }
                },
                Kind::Event => return None,
            })
        })
    };
    let blocking_calls = calls(false);
    let async_calls = calls(true);
    let blocking_doc = format!(
        "A client of contract [`{name}`]: each method calls the object in the server's process and waits for its result.\n\n`{blocking}::connect(\"uds:///run/app.sock#object\")` calls the object of that name (with no `#name`, the server's only object)."
    );
    let async_doc = format!(
        "[`{blocking}`] on tokio: the same calls, awaited (with ipckit's `tokio` feature)."
    );
    quote! {
        #[doc = #blocking_doc]
        #vis struct #blocking {
            proxy: ::ipckit::contract::Proxy,
        }

        #[allow(clippy::too_many_arguments)]
        impl #blocking {
            /// Connects to the server at `url` and calls the object its `#name` names.
            #vis fn connect(url: impl ::ipckit::ToEndpoint) -> ::ipckit::Result<Self> {
                ::core::result::Result::Ok(Self::new(::ipckit::contract::Proxy::connect(url)?))
            }

            /// A client calling through `proxy` (to choose its codec or timeout).
            #vis fn new(proxy: ::ipckit::contract::Proxy) -> Self {
                Self { proxy }
            }

            /// The proxy underneath.
            #vis fn proxy(&self) -> &::ipckit::contract::Proxy {
                &self.proxy
            }

            /// Subscribes to every event of the contract, and returns them as they come.
            #vis fn subscribe(&self) -> ::ipckit::Result<::ipckit::contract::Events<'_, #module::Event>> {
                self.proxy.subscribe::<#module::Event>()
            }

            #(#blocking_calls)*
        }

        ::ipckit::__if_tokio! {
            #[doc = #async_doc]
            #vis struct #asynchronous {
                proxy: ::ipckit::contract::AsyncProxy,
            }

            #[allow(clippy::too_many_arguments)]
            impl #asynchronous {
                /// Connects to the server at `url` and calls the object its `#name` names.
                #vis async fn connect(url: impl ::ipckit::ToEndpoint) -> ::ipckit::Result<Self> {
                    ::core::result::Result::Ok(Self::new(::ipckit::contract::AsyncProxy::connect(url).await?))
                }

                /// A client calling through `proxy` (to choose its codec or timeout).
                #vis fn new(proxy: ::ipckit::contract::AsyncProxy) -> Self {
                    Self { proxy }
                }

                /// The proxy underneath.
                #vis fn proxy(&self) -> &::ipckit::contract::AsyncProxy {
                    &self.proxy
                }

                /// Subscribes to every event of the contract; they come from the
                /// returned stream's `next`.
                #vis async fn subscribe(&self) -> ::ipckit::Result<#module::AsyncEvents<'_>> {
                    self.proxy.subscribe::<#module::Event>().await?;
                    ::core::result::Result::Ok(#module::AsyncEvents { proxy: &self.proxy })
                }

                #(#async_calls)*
            }
        }
    }
}

/// `CalculatorEvents`: one method per event, emitting it.
fn publisher(contract: &Contract, events: &[&Op]) -> TokenStream {
    let vis = &contract.item.vis;
    let name = &contract.item.ident;
    let module = &contract.module;
    let ty = format_ident!("{}Events", name);
    let emits = events.iter().map(|op| {
        let Op {
            ident,
            args_type,
            args,
            docs,
            ..
        } = op;
        let params = args.iter().map(|Arg { ident, ty, .. }| quote!(#ident: #ty));
        let names = args.iter().map(|a| &a.ident);
        let docs = docs_or(docs, &format!("Emits event `{}`.", op.name));
        quote! {
            #docs
            ///
            /// Pushes the event to every client subscribed to it, skipping those whose
            /// outbox is full.
            pub fn #ident(&self, #(#params),*) -> ::ipckit::Result<::ipckit::Delivery> {
                self.publisher.emit(&#module::#args_type { #(#names),* })
            }
        }
    });
    let doc = format!(
        "Emits the events of contract [`{name}`]: `{ty}::new(service.publisher(\"object\"))`, for the object hosted under that name. Cheap to clone, usable from any thread."
    );
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone)]
        #vis struct #ty {
            publisher: ::ipckit::contract::Publisher,
        }

        #[allow(clippy::too_many_arguments)]
        impl #ty {
            /// Emits through `publisher`.
            #vis fn new(publisher: ::ipckit::contract::Publisher) -> Self {
                Self { publisher }
            }

            /// The publisher underneath.
            #vis fn publisher(&self) -> &::ipckit::contract::Publisher {
                &self.publisher
            }

            #(#emits)*
        }
    }
}

/// `docs`, or `fallback` when there are none: the generated items are documented
/// whether or not the trait's are.
fn docs_or(docs: &[syn::Attribute], fallback: &str) -> TokenStream {
    if docs.is_empty() {
        quote!(#[doc = #fallback])
    } else {
        quote!(#(#docs)*)
    }
}

/// A type as written, without the spaces between tokens that quoting puts: for
/// introspection.
fn type_text(ty: &Type) -> String {
    let mut text = quote!(#ty).to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        text = text.replace(from, to);
    }
    text
}
