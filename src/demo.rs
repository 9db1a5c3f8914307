//! `rowcast demo`: a throwaway PostgreSQL with the farmers-market schema, sample
//! data, a simulated farmer, and a rowcast server with the storefront API
//! (`shop`), so a newcomer sees changes arrive with no set-up at all.

mod storefront;
mod traffic;

use crate::embedded_pg::{EmbeddedPg, Options};
use crate::error::Result;
use crate::server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_postgres::Client;

pub const DB: &str = "rowcast";
/// The demo's fixed HS256 secret: public by design, so sample tokens can be
/// minted with `rowcast token --jwt-secret rowcast-demo-secret ...`. Never use it elsewhere.
pub const DEMO_SECRET: &str = "rowcast-demo-secret";

/// `println!` that tolerates a closed stdout (`demo | head`) instead of panicking.
macro_rules! say {
    () => { say!("") };
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The demo's farms: (name, farmer id); farm ids are 1, 2, ... in this order.
pub(crate) const FARMS: &[(&str, i64)] = &[
    ("Sunny Valley Farm", 101),
    ("Green Acres", 102),
    ("Riverbend Orchard", 103),
    ("Hilltop Dairy", 104),
];

/// (farm, name, unit, quantity, price in cents)
const PRODUCTS: &[(i64, &str, &str, i32, i64)] = &[
    (1, "Heirloom Tomatoes", "lb", 20, 450),
    (1, "Sweet Corn", "ear", 120, 75),
    (1, "Zucchini", "lb", 35, 250),
    (1, "Basil", "bunch", 40, 300),
    (1, "Strawberries", "pint", 60, 500),
    (2, "Kale", "bunch", 50, 350),
    (2, "Carrots", "lb", 80, 200),
    (2, "Spinach", "lb", 25, 400),
    (2, "Beets", "lb", 30, 275),
    (2, "Garlic", "head", 90, 150),
    (3, "Honeycrisp Apples", "lb", 200, 325),
    (3, "Bartlett Pears", "lb", 75, 300),
    (3, "Peaches", "lb", 45, 400),
    (3, "Apple Cider", "gallon", 30, 900),
    (3, "Plums", "lb", 40, 350),
    (4, "Whole Milk", "gallon", 40, 650),
    (4, "Cheddar", "lb", 25, 1200),
    (4, "Butter", "lb", 30, 900),
    (4, "Yogurt", "quart", 35, 550),
    (4, "Eggs", "dozen", 100, 700),
];

pub struct DemoOptions {
    pub listen: SocketAddr,
    /// Stop by itself after this long (for scripted smoke runs); `None` runs until Ctrl-C.
    pub run_for: Option<Duration>,
    /// Seconds between simulated farmer actions.
    pub tick: Duration,
    /// Simulated shoppers (`--traffic`); 0: none.
    pub shoppers: usize,
}

/// The most shoppers `--traffic` simulates.
pub const MAX_SHOPPERS: usize = traffic::MAX_SHOPPERS;

pub async fn run(opts: DemoOptions) -> Result<()> {
    let mut signals = crate::server::Signals::install()?;
    // bound before anything else starts: a busy port fails at once, naming itself
    let listener = Server::bind(opts.listen).await?;
    say!("starting a throwaway PostgreSQL ...");
    let pg = EmbeddedPg::start_async(Options::default()).await?;
    let url = pg.create_database(DB).await?;
    let mut client = crate::db::connect(&url).await?;
    crate::migrate::migrate(&mut client, true).await?;
    seed(&client).await?;

    let mut cfg = ServerConfig::new(url.clone(), opts.listen);
    cfg.jwt.secret = Some(DEMO_SECRET.to_string());
    cfg.origins = crate::limits::Origins::localhost();
    cfg.market_api.enabled = true;
    let server = start_storefront(listener, cfg).await?;
    let token = crate::auth::mint_hs256(
        DEMO_SECRET,
        "1000",
        Some("customer"),
        Duration::from_secs(24 * 3600),
        None,
        None,
    )
    .map_err(|e| crate::Error::Config(e.to_string()))?;
    let base = server.base_url();
    let ws_base = base.replacen("http://", "ws://", 1);
    say!();
    say!("rowcast demo is running (Ctrl-C stops it and deletes the database)");
    say!();
    say!("open the storefront in a browser:");
    say!("  shop       {base}/");
    say!("  farmer     {base}/farmer   (in a second tab: change a quantity, confirm an order)");
    say!();
    say!("  database   {url}");
    say!("  WebSocket  {ws_base}/v1/ws?topics=farm-1,product-1");
    say!("  SSE        {base}/v1/events?topics=farm-1");
    say!("  polling    {base}/v1/poll?topics=farm-1   (then poll again with &cursor=<cursor>&wait=25)");
    say!("  Socket.IO  io('{base}?topics=farm-1', {{ auth: {{ token }} }})   (socket.io-client 4)");
    say!("  metrics    {base}/metrics");
    say!("  shop API   curl {base}/api/products   (cart and checkout with the customer token below: README, \"Carts and conflicts\")");
    say!();
    say!("watch Sunny Valley Farm live:");
    say!("  curl -N '{base}/v1/events?topics=farm-1'");
    say!("change the tomatoes yourself:");
    say!("  psql '{url}' -c \"UPDATE market.products SET quantity = 15 WHERE id = 1\"");
    say!();
    say!("orders are private: a token for customer 1000 (secret {DEMO_SECRET:?}, valid 24 h):");
    say!("  {token}");
    say!("  curl -N '{base}/v1/events?topics=customer-1000&token={token}'");
    let me = invocation();
    say!("mint others with:");
    say!("  {me} token --jwt-secret {DEMO_SECRET} --sub 1001 --role customer");
    say!();

    let farmer = tokio::spawn(simulate_farmer(client, opts.tick));
    let shoppers = if opts.shoppers > 0 {
        let restocker = crate::db::connect(&url).await?;
        let addr = server.addr;
        let set = traffic::start(&base, addr, opts.shoppers, restocker)?;
        say!(
            "simulating {} shoppers (WebSocket, a few on SSE, carts and checkouts): watch {base}/metrics,",
            opts.shoppers.min(MAX_SHOPPERS)
        );
        say!("or scrape it with Prometheus and open the SLOs (README, \"SLOs\")");
        say!();
        Some(set)
    } else {
        None
    };
    let run_for = opts.run_for.unwrap_or(Duration::MAX);
    tokio::select! {
        _ = signals.recv() => {}
        _ = tokio::time::sleep(run_for.min(Duration::from_secs(100 * 365 * 86400))) => {}
    }
    say!("stopping ...");
    // the simulations end first, their database connections closed, so that
    // stopping PostgreSQL below breaks nothing that would log a warning
    farmer.abort();
    let _ = farmer.await;
    if let Some(mut set) = shoppers {
        set.shutdown().await;
    }
    server.stop().await;
    drop(pg);
    Ok(())
}

/// How to run this very binary from the current shell: `rowcast` when that
/// name on `PATH` is this binary (`cargo install --path .`), else its path,
/// relative to the current directory when it is below it
/// (`./target/release/rowcast` after `cargo run --release -- demo`). Printed
/// lines then work when pasted, whether or not rowcast was installed.
pub fn invocation() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "rowcast".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            dir.join("rowcast")
                .canonicalize()
                .is_ok_and(|found| found == exe)
        })
    });
    if on_path {
        return "rowcast".into();
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.canonicalize().ok())
        .and_then(|cwd| {
            exe.strip_prefix(&cwd)
                .ok()
                .map(|rel| format!("./{}", rel.display()))
        })
        .unwrap_or_else(|| exe.display().to_string());
    if shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        shown
    } else {
        format!("'{}'", shown.replace('\'', "'\\''"))
    }
}

/// Inserts the sample farms, products and orders.
/// A server with the demo storefront's pages and token endpoint on its
/// client port, as `rowcast demo` runs it, on a listener bound beforehand
/// (`Server::bind`). Only for demos and tests: it hands out tokens.
pub async fn start_storefront(listener: TcpListener, cfg: ServerConfig) -> Result<Server> {
    Server::start_on_with(listener, cfg, storefront::router()).await
}

pub async fn seed(client: &Client) -> Result<()> {
    for (i, (name, farmer)) in FARMS.iter().enumerate() {
        client
            .execute(
                "INSERT INTO market.farms (id, name, farmer_id) VALUES ($1, $2, $3)",
                &[&(i as i64 + 1), name, farmer],
            )
            .await?;
    }
    for (i, (farm, name, unit, qty, price)) in PRODUCTS.iter().enumerate() {
        client
            .execute(
                "INSERT INTO market.products (id, farm_id, name, unit, quantity, price_cents)
                 VALUES ($1, $2, $3, $4, $5::bigint, $6)",
                &[&(i as i64 + 1), farm, name, unit, &(*qty as i64), price],
            )
            .await?;
    }
    for i in 0..8i64 {
        client
            .execute(
                "INSERT INTO market.orders (customer_id, farm_id, total_cents) VALUES ($1, $2, $3)",
                &[&(1000 + i % 4), &(i % 4 + 1), &(1500 + 250 * i)],
            )
            .await?;
    }
    client
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('market.farms','id'), (SELECT max(id) FROM market.farms));
             SELECT setval(pg_get_serial_sequence('market.products','id'), (SELECT max(id) FROM market.products));",
        )
        .await?;
    Ok(())
}

/// Every tick: sells or restocks a product of Sunny Valley Farm and one elsewhere,
/// and moves one open order to its next status (opening a new order now and then).
async fn simulate_farmer(client: Client, tick: Duration) {
    let mut n: u64 = 0;
    loop {
        tokio::time::sleep(tick).await;
        n += 1;
        if let Err(e) = farmer_step(&client, n).await {
            tracing::warn!(error = %e, "simulated farmer step failed");
        }
    }
}

async fn farmer_step(client: &Client, n: u64) -> Result<()> {
    let sunny = fastrand::i64(1..=5);
    let other = fastrand::i64(6..=PRODUCTS.len() as i64);
    for id in [sunny, other] {
        let delta = if fastrand::u8(..4) == 0 {
            fastrand::i64(5..=20)
        } else {
            -fastrand::i64(1..=3)
        };
        client
            .execute(
                "UPDATE market.products SET quantity = greatest(quantity + $2::bigint, 0) WHERE id = $1",
                &[&id, &delta],
            )
            .await?;
    }
    if n.is_multiple_of(2) {
        client
            .execute(
                "UPDATE market.orders SET status = CASE status
                     WHEN 'PENDING' THEN 'CONFIRMED' WHEN 'CONFIRMED' THEN 'PREPARING'
                     WHEN 'PREPARING' THEN 'READY' ELSE 'COMPLETED' END,
                     updated_at = now()
                 WHERE id = (SELECT id FROM market.orders
                              WHERE status NOT IN ('COMPLETED', 'CANCELLED')
                              ORDER BY random() LIMIT 1)",
                &[],
            )
            .await?;
    }
    if n.is_multiple_of(5) {
        client
            .execute(
                "INSERT INTO market.orders (customer_id, farm_id, total_cents) VALUES ($1, $2, $3)",
                &[
                    &(1000 + fastrand::i64(0..4)),
                    &fastrand::i64(1..=4),
                    &fastrand::i64(500..5000),
                ],
            )
            .await?;
    }
    Ok(())
}
