//! Fleet autoscaling: policies (reactive, predictive) that read fenzo's idle and shortfall hints, and fleets
//! (EC2 auto scaling groups, local processes, simulated) that carry out their decisions.
//!
//! The AWS SDK crates live here and nowhere else: they compile slowly.

pub mod config;
#[cfg(feature = "ec2")]
pub mod ec2;
pub mod fleet;
pub mod local;
pub mod plan;
pub mod policy;
pub mod sim;
pub mod trace;

/// The EC2 fleet of Auto Scaling group `asg`, when this build has it (`ec2` feature).
pub fn ec2_fleet(asg: &str) -> Result<Box<dyn fleet::Fleet>, String> {
    #[cfg(feature = "ec2")]
    {
        Ok(Box::new(ec2::Ec2::new(asg.to_string())))
    }
    #[cfg(not(feature = "ec2"))]
    {
        Err(format!("the ec2 fleet (group {asg}) is not in this build: build titan-autoscaler with its ec2 feature"))
    }
}
