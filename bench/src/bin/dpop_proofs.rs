//! `dpop-proofs --issuer URL --client ID --secret S --htu URL --count N --token FILE
//! --proofs FILE`: for bench/run.sh's DPoP row. Asks the dev provider for a DPoP-bound
//! client-credentials token (a proof at its token endpoint binds it to a fresh key) and
//! writes it to the token FILE, then writes COUNT fresh proofs for `GET HTU` with that
//! token to the proofs FILE, one per line: the gateway remembers every proof it
//! accepted (its replay cache), so wrk must send each one once.

use std::io::Write as _;
use std::process::ExitCode;

use portcullis::clock::{Clock, SystemClock};
use portcullis::jose::dpop::DpopKey;
use portcullis_bench::args::Args;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread();
    let main = async { run().await.map_err(|e| format!("dpop-proofs: {e}")) };
    portcullis_bench::exit_with(portcullis_bench::block_on("dpop-proofs", runtime, main))
}

async fn run() -> Result<(), BoxError> {
    portcullis::install_crypto_provider();
    let args = Args::from_env(
        "dpop-proofs",
        &[
            "issuer", "client", "secret", "htu", "count", "token", "proofs",
        ],
    )?;
    let issuer: String = args.required("issuer")?;
    let client: String = args.required("client")?;
    let secret: String = args.required("secret")?;
    let htu: String = args.required("htu")?;
    let count: u64 = args.required("count")?;
    let (key, _) = DpopKey::generate()?;
    let now = SystemClock.now();
    let endpoint = format!("{issuer}/token");
    let proof = key.proof("POST", &endpoint, None, None, now)?;
    let answer: serde_json::Value = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .post(&endpoint)
        .basic_auth(&client, Some(&secret))
        .header("dpop", proof)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .json()
        .await?;
    let token = answer["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access token: {answer}"))?
        .to_owned();
    if answer["token_type"] != "DPoP" {
        return Err(format!("the token is not DPoP-bound: {answer}").into());
    }
    std::fs::write(args.required::<String>("token")?, &token)?;
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(args.required::<String>("proofs")?)?);
    for _ in 0..count {
        let proof = key.proof("GET", &htu, None, Some(&token), SystemClock.now())?;
        writeln!(out, "{proof}")?;
    }
    out.flush()?;
    Ok(())
}
